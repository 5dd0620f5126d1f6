"""Upper layers + head for each training mode.

- ``full``: every layer fine-tuned from text (baseline, no cache).
- ``semi_frozen``: layers >= k fine-tuned from the cache.
- ``adapters``: layers >= k frozen with bottleneck adapters, trained from the cache.
- ``adapters_full``: the same adapters and head, lower layers recomputed from text every step
  (baseline: only the cache differs).
- ``lora``: layers >= k frozen with LoRA updates of their attention's query and value projections
  (peft), trained from the cache; ``lora_full`` is its baseline from text, as for adapters.
- ``cross_model``: every layer fine-tuned from text, each token's input embedding plus a learned
  projection of another model's cached final states (``recycling.cross_model``); baseline ``full``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Callable

import torch
from torch import nn

from recycling import encoders
from recycling.config import CACHED_MODES, MODES, ExperimentConfig
from recycling.cross_model import Bridge
from recycling.errors import UserError

ADAPTER_NAME = "recycling"


class TaskModel(nn.Module):
    """An encoder (whole, or its upper part when ``cached``) followed by a task head.

    ``frozen`` lists the modules below the cut in a text mode that trains adapters only: they are
    kept in eval mode while training, exactly like the lower part that built the cache, so that
    ``adapters_full`` and ``adapters`` differ in nothing but where layer k's input comes from.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, cached: bool, frozen: list[nn.Module] = (),
                 bridge: nn.Module | None = None):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.cached = cached
        self.bridge = bridge  # cross_model: projects the batch's "source" states onto the input embeddings
        self.frozen = list(frozen)  # a plain list: these modules are already registered in encoder
        # A compressed cache's decoder (cache_builder.codecs), set by whoever pairs the model with its
        # cache: it decodes each batch on the model's device. Its tensors are not in the state dict.
        self.codec = None

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def forward(self, batch: dict):
        mask = batch["attention_mask"]
        if self.cached:
            hidden = batch["hidden"] if self.codec is None else self.codec(batch["hidden"])
            hidden = encoders.run_upper(self.encoder, hidden.to(self.head_dtype), mask)
        elif self.bridge is not None:
            source = batch["source"] if self.codec is None else self.codec(batch["source"])
            embeds = self.encoder.get_input_embeddings()(batch["input_ids"])
            embeds = embeds + self.bridge(source.to(embeds.dtype), batch["source_mask"])
            hidden = encoders.run_embedded(self.encoder, embeds, mask, batch.get("token_type_ids"))
        else:
            hidden = encoders.run_lower(self.encoder, batch["input_ids"], mask, batch.get("token_type_ids"))
        return self.head(hidden, mask)

    @property
    def head_dtype(self) -> torch.dtype:
        return next(self.head.parameters()).dtype

    def loss(self, outputs, batch: dict):
        return self.head.loss(outputs, batch)

    def unbatch(self, outputs, batch: dict) -> list:
        return self.head.unbatch(outputs, batch)


def adapter_config(hidden_size: int, adapter_size: int, cut_layer: int):
    """Houlsby placement (after attention and after the FFN), GELU, only in layers >= cut_layer."""
    from adapters import DoubleSeqBnConfig

    return DoubleSeqBnConfig(reduction_factor=hidden_size / adapter_size, non_linearity="gelu",
                             leave_out=list(range(cut_layer)))


# Families whose adapter placement tests/test_models.py checks. `adapters` 1.3.0 ships no layer
# mapping for the other registered encoders (camembert, data2vec-text, roformer, ernie,
# xlm-roberta-xl, esm, megatron-bert); they train in the full and semi_frozen modes only.
ADAPTER_FAMILIES = ("bert", "roberta", "xlm-roberta", "electra", "distilbert", "mpnet", "deberta",
                    "deberta-v2", "modernbert", "t5", "mt5")


def add_adapters(model: nn.Module, adapter_size: int, cut_layer: int) -> None:
    """Add trainable bottleneck adapters to layers >= cut_layer and freeze every weight of ``model``."""
    import adapters

    model_type = model.config.model_type
    if model_type not in ADAPTER_FAMILIES:
        raise UserError(
            f"the adapter modes do not support architecture '{model_type}' (the adapters library has no "
            f"layer mapping for it); use mode full or semi_frozen, or one of: {', '.join(ADAPTER_FAMILIES)}"
        )
    # `adapters` wraps fused query/key/value projections (DeBERTa's in_proj, ModernBERT's Wqkv) in a
    # LoRA layer that always owns a bias: where the original had none, the wrapper's freshly
    # initialised one would shift every layer, below the cut too, even with no adapter active.
    biasless = [name for name, module in model.named_modules()
                if isinstance(module, nn.Linear) and module.bias is None]
    adapters.init(model, interface=_interface(model))
    for name in biasless:
        module = model.get_submodule(name)
        if getattr(module, "bias", None) is not None:
            module.bias = None
    # Activating an adapter makes `adapters` open an empty forward context before the activation is
    # recorded, which logs "none are activated for the forward pass" although the adapter is active.
    mixin_log = logging.getLogger("adapters.model_mixin")
    level = mixin_log.level
    mixin_log.setLevel(logging.ERROR)
    try:
        model.add_adapter(ADAPTER_NAME, config=adapter_config(encoders.hidden_size(model), adapter_size, cut_layer),
                          set_active=True)
    finally:
        mixin_log.setLevel(level)
    model.train_adapter(ADAPTER_NAME)


def _interface(model: nn.Module):
    """MPNet is not built into `adapters`: describe where its layers keep their projections."""
    if model.config.model_type != "mpnet":
        return None
    from adapters import AdapterModelInterface

    return AdapterModelInterface(
        adapter_methods=["bottleneck"], model_embeddings="embeddings", model_layers="encoder.layer",
        layer_self_attn="attention", layer_cross_attn=None, attn_k_proj="attn.k", attn_q_proj="attn.q",
        attn_v_proj="attn.v", attn_o_proj="attn.o", layer_intermediate_proj="intermediate.dense",
        layer_output_proj="output.dense",
    )


# The projections LoRA updates in each layer: attention's query and value, or the fused projection
# that computes them (DeBERTa's in_proj, ModernBERT's Wqkv). peft's own table lacks DistilBERT,
# MPNet and ModernBERT.
LORA_TARGETS = {"distilbert": ("q_lin", "v_lin"), "mpnet": ("q", "v"), "deberta": ("in_proj",),
                "deberta-v2": ("query_proj", "value_proj"), "modernbert": ("Wqkv",), "t5": ("q", "v"),
                "mt5": ("q", "v")}
QUERY_VALUE = ("query", "value")  # every other supported family (BERT's attention layout)


def lora_modules(model: nn.Module, cut_layer: int) -> list[str]:
    """Full names of the linear layers LoRA updates: the targets of layers >= ``cut_layer`` only."""
    targets = LORA_TARGETS.get(model.config.model_type, QUERY_VALUE)
    path = encoders.architecture(model).layers
    names = [f"{path}.{i}.{name}" for i, layer in enumerate(encoders.layers(model)) if i >= cut_layer
             for name, module in layer.named_modules()
             if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets]
    if not names:
        raise UserError(f"no {' or '.join(targets)} projection found in the layers of architecture "
                        f"'{model.config.model_type}' for the LoRA modes")
    return names


def add_lora(model: nn.Module, rank: int, alpha: float, cut_layer: int) -> None:
    """Add trainable LoRA updates (peft) to the query and value projections of layers >= cut_layer
    and freeze every weight of ``model``. B starts at zero, so the model starts as the pretrained one."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=lora_modules(model, cut_layer))
    model.requires_grad_(False)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_A." in name or ".lora_B." in name)


_DEFAULT = {f.name: f.default for f in dataclasses.fields(ExperimentConfig)}


@dataclasses.dataclass(frozen=True)
class UpperSettings:
    """What the upper part's trainable extras read: the adapters' width, LoRA's rank and scale
    (defaults: the config's), and the width of a cross-model source's states."""

    adapter_size: int = _DEFAULT["adapter_size"]
    lora_rank: int = _DEFAULT["lora_rank"]
    lora_alpha: float = _DEFAULT["lora_alpha"]
    source_size: int | None = None

    @classmethod
    def of(cls, config, source_size: int | None = None) -> "UpperSettings":
        return cls(config.adapter_size, config.lora_rank, config.lora_alpha, source_size)


def build_model(mode: str, base: nn.Module, cut_layer: int, make_head: Callable[[], nn.Module],
                upper: UpperSettings, seed: int) -> TaskModel:
    """A fresh model for ``mode`` from a copy of the pretrained ``base`` (left unchanged).

    ``make_head`` is called after seeding, so head, adapter and LoRA initialisation depend on
    ``seed`` only.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode}")
    torch.manual_seed(seed)
    encoder = copy.deepcopy(base)
    encoders.check_cut(encoder, cut_layer)
    encoders.drop_pooler(encoder)
    if mode in ("adapters", "adapters_full"):
        add_adapters(encoder, upper.adapter_size, cut_layer)
    if mode in ("lora", "lora_full"):
        add_lora(encoder, upper.lora_rank, upper.lora_alpha, cut_layer)
    frozen = encoders.below_cut(encoder, cut_layer) if mode in ("adapters_full", "lora_full") else []
    if mode in CACHED_MODES:
        encoder = encoders.upper_part(encoder, cut_layer)
    head, bridge = make_head(), None
    if mode == "cross_model":  # after the head: it starts exactly as full's of the same seed
        if upper.source_size is None:
            raise ValueError("cross_model needs the width of the source's states (UpperSettings.source_size)")
        bridge = Bridge(upper.source_size, encoders.hidden_size(encoder))
    return TaskModel(encoder, head, cached=mode in CACHED_MODES, frozen=frozen, bridge=bridge)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
