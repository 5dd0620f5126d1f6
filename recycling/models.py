"""Upper layers + head for each training mode.

- ``full``: every layer fine-tuned from text (baseline, no cache).
- ``semi_frozen``: layers >= k fine-tuned from the cache.
- ``adapters``: layers >= k frozen with bottleneck adapters, trained from the cache.
- ``adapters_full``: the same adapters and head, lower layers recomputed from text every step
  (baseline: only the cache differs).
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from recycling import encoders
from recycling.config import CACHED_MODES, MODES

ADAPTER_NAME = "recycling"


class FirstTokenHead(nn.Module):
    """Classification on the first token's final hidden state."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.dropout(hidden[:, 0])
        x = self.dropout(torch.tanh(self.dense(x)))
        return self.out(x)


class Classifier(nn.Module):
    """An encoder (whole, or its upper part when ``cached``) followed by a head."""

    def __init__(self, encoder: nn.Module, head: nn.Module, cached: bool):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.cached = cached

    def forward(self, batch: dict) -> torch.Tensor:
        if self.cached:
            hidden = encoders.run_upper(self.encoder, batch["hidden"], batch["attention_mask"])
        else:
            hidden = self.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return self.head(hidden)


def adapter_config(hidden_size: int, adapter_size: int, cut_layer: int):
    """Houlsby placement (after attention and after the FFN), GELU, only in layers >= cut_layer."""
    from adapters import DoubleSeqBnConfig

    return DoubleSeqBnConfig(reduction_factor=hidden_size / adapter_size, non_linearity="gelu",
                             leave_out=list(range(cut_layer)))


def add_adapters(model: nn.Module, adapter_size: int, cut_layer: int) -> None:
    """Add trainable bottleneck adapters to layers >= cut_layer and freeze every weight of ``model``."""
    import adapters

    adapters.init(model, interface=_interface(model))
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


def build_classifier(mode: str, base: nn.Module, cut_layer: int, num_labels: int,
                     adapter_size: int, head_dropout: float, seed: int) -> Classifier:
    """A fresh model for ``mode`` from a copy of the pretrained ``base`` (left unchanged)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode}")
    torch.manual_seed(seed)  # head and adapter initialisation depend on the seed
    encoder = copy.deepcopy(base)
    encoders.check_cut(encoder, cut_layer)
    encoders.drop_pooler(encoder)
    if mode in ("adapters", "adapters_full"):
        add_adapters(encoder, adapter_size, cut_layer)
    if mode in CACHED_MODES:
        encoder = encoders.upper_part(encoder, cut_layer)
    head = FirstTokenHead(encoders.hidden_size(base), num_labels, head_dropout)
    return Classifier(encoder, head, cached=mode in CACHED_MODES)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
