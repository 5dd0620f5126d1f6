"""The activation store: one folder per cache, one sub-folder per split.

Layout (all arrays are ``.npy`` files, opened memory-mapped)::

    <cache>/manifest.json        written last: a cache without it is not complete
    <cache>/<split>/hidden.npy   (n_tokens, hidden) cut-layer output of every token, no padding
    <cache>/<split>/offsets.npy  (n_features + 1,) int64: feature i is hidden[offsets[i]:offsets[i+1]]

A cache holds only what the frozen lower layers produced. Targets come from the task at run time,
so one cache serves any label set, and features are addressed by their index in the split.

bfloat16 has no numpy dtype, so it is stored as its raw 16 bits (uint16) and viewed back in torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from recycling.errors import UserError

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
NUMPY_STORAGE = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}
MANIFEST = "manifest.json"
FORMAT_VERSION = 2


def to_storage(hidden: torch.Tensor, dtype: str) -> np.ndarray:
    t = hidden.detach().to(device="cpu", dtype=DTYPES[dtype])
    return (t.view(torch.uint16) if dtype == "bfloat16" else t).numpy()


class SplitWriter:
    """Fills the arrays of one split; rows may arrive in any order."""

    def __init__(self, folder: Path, lengths: list[int], hidden_size: int, dtype: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.dtype = dtype
        self.offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        np.save(folder / "offsets.npy", self.offsets)
        self.hidden = np.lib.format.open_memmap(
            folder / "hidden.npy", mode="w+", dtype=NUMPY_STORAGE[dtype],
            shape=(int(self.offsets[-1]), hidden_size),
        )

    def write(self, index: int, rows: torch.Tensor) -> None:
        start, end = self.offsets[index], self.offsets[index + 1]
        if rows.shape[0] != end - start:
            raise ValueError(f"example {index}: {rows.shape[0]} rows for {end - start} tokens")
        self.hidden[start:end] = to_storage(rows, self.dtype)

    def close(self) -> None:
        self.hidden.flush()
        del self.hidden


class CachedSplit:
    """Feature i is its hidden states ``[len_i, hidden]`` in the storage dtype, read from the memmap.

    Rows stay in the storage dtype (half the bytes of float32) until the model casts them on its device.
    """

    def __init__(self, folder: Path, dtype: str):
        self.folder = folder
        self.dtype = dtype
        self.torch_dtype = DTYPES[dtype]
        self.hidden = np.load(folder / "hidden.npy", mmap_mode="r")
        self.offsets = np.load(folder / "offsets.npy")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def hidden_size(self) -> int:
        return self.hidden.shape[1]

    def rows(self, i: int) -> np.ndarray:
        """Feature i as a view of the memmap (no copy; bfloat16 as its raw uint16 bits)."""
        return self.hidden[self.offsets[i]:self.offsets[i + 1]]

    def as_torch(self, array: np.ndarray) -> torch.Tensor:
        """A storage-dtype numpy array as a tensor of ``torch_dtype`` (sharing its memory)."""
        t = torch.from_numpy(array)
        return t.view(torch.bfloat16) if self.dtype == "bfloat16" else t

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.as_torch(np.array(self.rows(i)))


class ActivationCache:
    """A complete cache on disk: its manifest and its splits."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise UserError(f"no complete cache at {self.path} (no {MANIFEST})")
        self.manifest = json.loads(manifest.read_text())
        version = self.manifest.get("fingerprint", {}).get("format")
        if version != FORMAT_VERSION:
            raise UserError(
                f"cache at {self.path} has format {version}, this version reads format {FORMAT_VERSION} "
                "(label-free, fingerprinted by the exact token ids): delete that folder and rerun to rebuild it")

    @property
    def fingerprint(self) -> dict:
        return self.manifest["fingerprint"]

    def split(self, name: str) -> CachedSplit:
        return CachedSplit(self.path / name, self.fingerprint["dtype"])

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
