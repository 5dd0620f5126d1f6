"""Compressed caches: codecs that shrink each cached row, fitted once on a sample of the training split.

- ``int8``: one scale per channel (the channel's largest magnitude in the sample / 127), values
  rounded and clipped to [-127, 127]. Per-channel, not per-token: a few outlier channels (issue 11
  reports one of all-MiniLM-L6-v2 at cut 3 reaching |9.7| against a median channel maximum of 1.9)
  would otherwise set every token's scale and waste bits of every other channel.
- ``pca``: the mean and the top ``dim`` principal directions of the sample; a row is stored as its
  ``dim`` coordinates (in the cache dtype) and decoded as ``codes @ components + mean``.
- ``autoencoder``: a linear encoder and decoder to ``dim`` values, started from the PCA solution and
  trained on the sample with a loss that is mostly ``1 - cosine similarity`` plus a small term on
  the relative error of the norm (after Balazy et al., 2021, "Direction is what you need").

A codec is a module: its fitted tensors are buffers, saved with safetensors inside the cache
(``codec.safetensors``) and restored from there; ``decode`` runs on the compute device, on the
padded batch, right before the upper layers.
"""

from __future__ import annotations

import torch
from torch import nn

from recycling.config import CODECS, DIM_CODECS  # noqa: F401  (the names the config accepts)
PARAMS_FILE = "codec.safetensors"
FIT_TOKENS = 50_000  # rows of the training split the codec is fitted on (all of them when fewer)
FIT_SEED = 0
AE_STEPS, AE_BATCH, AE_LR, AE_NORM_WEIGHT = 300, 4096, 1e-3, 0.1


class Codec(nn.Module):
    """``encode`` a float row ``[..., hidden]`` to what the cache stores; ``decode`` it back (float32)."""

    name: str

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        for key, value in tensors.items():
            self.register_buffer(key, value.detach().to(torch.float32).contiguous(), persistent=False)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {key: buffer.detach().cpu().contiguous() for key, buffer in self.named_buffers()}

    @property
    def width(self) -> int:
        """Values stored per token."""
        raise NotImplementedError

    def encode(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode(codes)


class Int8Codec(Codec):
    name = "int8"

    @property
    def width(self) -> int:
        return self.scale.numel()

    def encode(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.round(hidden.float() / self.scale).clamp_(-127, 127).to(torch.int8)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.float() * self.scale


class PcaCodec(Codec):
    name = "pca"

    @property
    def width(self) -> int:
        return self.components.shape[0]

    def encode(self, hidden: torch.Tensor) -> torch.Tensor:
        return (hidden.float() - self.mean) @ self.components.T

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.float() @ self.components + self.mean


class AutoencoderCodec(Codec):
    name = "autoencoder"

    @property
    def width(self) -> int:
        return self.enc_weight.shape[0]

    def encode(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.float() @ self.enc_weight.T + self.enc_bias

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.float() @ self.dec_weight.T + self.dec_bias


KINDS = {c.name: c for c in (Int8Codec, PcaCodec, AutoencoderCodec)}


def load(name: str, tensors: dict[str, torch.Tensor]) -> Codec:
    """A codec from the tensors ``Codec.tensors()`` gave (as read back from ``codec.safetensors``)."""
    return KINDS[name](tensors)


def _pca(sample: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and top ``dim`` principal directions (rows) of ``sample``, from the covariance in float64."""
    x = sample.double()
    mean = x.mean(0)
    centred = x - mean
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    components = vectors.flip(1)[:, :dim].T
    # Each direction's sign is arbitrary: fix it (largest entry positive) so a refit gives the same codes.
    signs = torch.sign(components[torch.arange(dim), components.abs().argmax(1)])
    return mean, components * signs[:, None]


def fit(name: str, sample: torch.Tensor, dim: int | None) -> Codec:
    """Fit codec ``name`` on ``sample`` (float rows ``[n, hidden]`` of the training split)."""
    sample = sample.float()
    hidden = sample.shape[1]
    if name == "int8":
        absmax = sample.abs().amax(0)
        # A channel that is zero in the whole sample keeps a scale of 1 (its values round to 0 anyway).
        return Int8Codec({"scale": torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax))})
    if not dim or not 0 < dim <= hidden:
        raise ValueError(f"codec {name} needs 0 < dim <= {hidden}, got {dim}")
    mean, components = _pca(sample, dim)
    if name == "pca":
        return PcaCodec({"mean": mean, "components": components})
    return _fit_autoencoder(sample, mean.float(), components.float())


def _fit_autoencoder(sample: torch.Tensor, mean: torch.Tensor, components: torch.Tensor) -> Codec:
    """Start at PCA (encoder: project the centred row; decoder: back, plus the mean), then train on
    the direction of each row, with a small weight on its norm."""
    generator = torch.Generator().manual_seed(FIT_SEED)
    enc_w = nn.Parameter(components.clone())
    enc_b = nn.Parameter(-(components @ mean))
    dec_w = nn.Parameter(components.T.clone())
    dec_b = nn.Parameter(mean.clone())
    optimizer = torch.optim.Adam([enc_w, enc_b, dec_w, dec_b], lr=AE_LR)
    for _ in range(AE_STEPS):
        rows = sample[torch.randint(len(sample), (min(AE_BATCH, len(sample)),), generator=generator)]
        out = (rows @ enc_w.T + enc_b) @ dec_w.T + dec_b
        loss = autoencoder_loss(out, rows)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return AutoencoderCodec({"enc_weight": enc_w, "enc_bias": enc_b, "dec_weight": dec_w, "dec_bias": dec_b})


def fit_error(codec: Codec, rows: torch.Tensor, storage: torch.dtype) -> dict:
    """How far ``rows`` come back after a round trip through the cache (codes cast to ``storage``):
    mean ``1 - cosine similarity`` and mean relative L2 error, for the manifest."""
    with torch.no_grad():
        codes = codec.encode(rows)
        out = codec.decode(codes if codes.dtype == torch.int8 else codes.to(storage))
        cosine = nn.functional.cosine_similarity(out, rows, dim=-1)
        relative = (out - rows).norm(dim=-1) / rows.norm(dim=-1).clamp(min=1e-6)
    return {"one_minus_cosine": round((1 - cosine).mean().item(), 6), "relative_l2": round(relative.mean().item(), 6)}


def autoencoder_loss(out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mostly ``1 - cos(out, row)``, plus a small weight on the squared relative error of the norm."""
    cosine = nn.functional.cosine_similarity(out, rows, dim=-1)
    norms = rows.norm(dim=-1).clamp(min=1e-6)
    return (1 - cosine).mean() + AE_NORM_WEIGHT * (((out.norm(dim=-1) - norms) / norms) ** 2).mean()
