"""The activation store: one folder per cache, one sub-folder per split.

Layout (all arrays are ``.npy`` files, opened memory-mapped)::

    <cache>/manifest.json        written last: a cache without it is not complete
    <cache>/<split>/hidden.npy   (n_tokens, hidden) cut-layer output of every token, no padding
    <cache>/<split>/offsets.npy  (n_features + 1,) int64: feature i is hidden[offsets[i]:offsets[i+1]]
    <cache>/<split>/split.json   the split's size and checksums, written before the split is published
    <cache>/codec.safetensors    only in a compressed cache: the codec's fitted tensors (cache_builder.codecs)

The manifest records, per split, the byte size and SHA-256 of each array file. Opening a cache
(:class:`ActivationCache`) checks its structure and sizes, which costs a few reads; ``verify()``
also rereads every byte to compare the checksums. Caches written before checksums were recorded
(same format) still open, and ``verify()`` says it cannot check them.

A cache holds only what the frozen lower layers produced. Targets come from the task at run time,
so one cache serves any label set, and features are addressed by their index in the split.

bfloat16 has no numpy dtype, so it is stored as its raw 16 bits (uint16) and viewed back in torch.
A compressed cache stores each row as its codec's codes (int8, or ``dim`` values in the cache dtype);
its manifest's ``codec`` record names the codec, its stored width and dtype and the checksum of
its fitted tensors, and the batches are decoded on the compute device (``ActivationCache.codec``).
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from cache_builder import codecs
from recycling.errors import UserError
from recycling.files import file_sha256

logger = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# What rows are stored as: a cache dtype, or int8 codes.
TORCH_STORAGE = DTYPES | {"int8": torch.int8}
NUMPY_STORAGE = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32, "int8": np.int8}
MANIFEST = "manifest.json"
FORMAT_VERSION = 2
ARRAYS = ("hidden.npy", "offsets.npy")
SPLIT_RECORD = "split.json"
# The errors a write gives when there is no room for it: a full disk, a quota, a file size limit.
NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def reserve(path: Path) -> None:
    """Allocate every block of ``path`` now, so a full disk is an error here and never a SIGBUS later.

    ``open_memmap`` leaves the file sparse, and a store through the memmap into a page the disk
    has no room for kills the process with SIGBUS and no message.
    """
    size = path.stat().st_size
    with open(path, "rb+") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                raise
            # This filesystem cannot preallocate: the best left is to compare with the free space.
            missing = size - os.fstat(f.fileno()).st_blocks * 512
            if missing > shutil.disk_usage(path.parent).free:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None


def human_size(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if nbytes >= scale / 10:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes / 1e3:.1f} KB"


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def file_records(folder: Path) -> dict:
    """Byte size and SHA-256 of each array file of a split, as the manifest records them."""
    return {name: {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)}
            for name in ARRAYS}


def to_storage(hidden: torch.Tensor, dtype: str) -> np.ndarray:
    t = hidden.detach().to(device="cpu", dtype=TORCH_STORAGE[dtype])
    return (t.view(torch.uint16) if dtype == "bfloat16" else t).numpy()


class SplitWriter:
    """Fills the arrays of one split; rows may arrive in any order.

    Rows are written with ``pwrite`` at their place in ``hidden.npy``, which is allocated whole
    when the writer is created: several processes (on one machine or on several sharing the
    folder) may each reopen the split and write their own features' rows.
    """

    def __init__(self, folder: Path, lengths: list[int], hidden_size: int, dtype: str):
        """Raises OSError (errno in NO_ROOM) when the disk has no room for the whole split."""
        folder.mkdir(parents=True, exist_ok=True)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        np.save(folder / "offsets.npy", offsets)
        # open_memmap only writes the header and sizes the file; rows go through pwrite.
        header = np.lib.format.open_memmap(folder / "hidden.npy", mode="w+", dtype=NUMPY_STORAGE[dtype],
                                           shape=(int(offsets[-1]), hidden_size))
        del header
        reserve(folder / "hidden.npy")
        self._open(folder, dtype)

    @classmethod
    def reopen(cls, folder: Path, dtype: str) -> "SplitWriter":
        """A writer of a split another writer (maybe another process's) created."""
        writer = cls.__new__(cls)
        writer._open(folder, dtype)
        return writer

    def _open(self, folder: Path, dtype: str) -> None:
        self.folder, self.dtype = folder, dtype
        self.offsets = np.load(folder / "offsets.npy")
        layout = np.load(folder / "hidden.npy", mmap_mode="r")  # only to read where the rows start
        self.start, self.row_bytes = layout.offset, layout.shape[1] * layout.dtype.itemsize
        del layout
        self.fd = os.open(folder / "hidden.npy", os.O_WRONLY)

    @staticmethod
    def nbytes(lengths: list[int], hidden_size: int, dtype: str) -> int:
        """About what a split of these lengths takes on disk (the .npy headers aside)."""
        itemsize = np.dtype(NUMPY_STORAGE[dtype]).itemsize
        return int(sum(lengths)) * hidden_size * itemsize + (len(lengths) + 1) * 8

    def write(self, index: int, rows: torch.Tensor) -> None:
        start, end = self.offsets[index], self.offsets[index + 1]
        if rows.shape[0] != end - start:
            raise ValueError(f"example {index}: {rows.shape[0]} rows for {end - start} tokens")
        data = np.ascontiguousarray(to_storage(rows, self.dtype)).tobytes()
        position = self.start + int(start) * self.row_bytes
        while data:  # pwrite may write less than asked
            written = os.pwrite(self.fd, data, position)
            data, position = data[written:], position + written

    def close(self) -> None:
        """fsync both arrays: the split may be published (renamed) right after."""
        os.fsync(self.fd)
        os.close(self.fd)
        fsync_file(self.folder / "offsets.npy")


class CachedSplit:
    """Feature i is its hidden states ``[len_i, hidden]`` in the storage dtype, read from the memmap.

    Rows stay in the storage dtype (half the bytes of float32) until the model casts them on its device.
    """

    def __init__(self, folder: Path, dtype: str, codec: "codecs.Codec | None" = None):
        self.folder = folder
        self.dtype = dtype
        self.codec = codec  # decodes the rows on the compute device (None: they are the hidden states)
        self.torch_dtype = TORCH_STORAGE[dtype]
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
    """A complete cache on disk: its manifest and its splits.

    Opening one checks, cheaply, that it is whole: a manifest that parses with the expected
    fields, every split's folder and arrays present at the sizes the manifest records, offsets
    that index exactly the fingerprint's features into the hidden array, and the hidden array's
    shape and dtype. Any failure is a :class:`UserError` naming the file. Damage that keeps sizes
    and structure (a flipped byte) is found only by :meth:`verify`, which rereads every byte.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise UserError(f"no complete cache at {self.path} (no {MANIFEST})")
        self.manifest = self._read_manifest(manifest)
        codec = self.manifest.get("codec")
        if codec is not None:
            params = self.path / codecs.PARAMS_FILE
            if not params.is_file() or params.stat().st_size != codec["bytes"]:
                raise self._damaged(f"cache file {params} is missing or not the size the manifest records")
        for name, record in self.manifest["splits"].items():
            self._check_split(name, record)

    @property
    def storage(self) -> tuple[str, int]:
        """What each row is stored as: its dtype name and width (the codec's, or the cache dtype and
        the hidden size)."""
        codec = self.manifest.get("codec")
        if codec is None:
            return self.fingerprint["dtype"], self.manifest["hidden_size"]
        return codec["storage"], codec["width"]

    @property
    def label(self) -> str:
        """How rows are stored, for tables: the cache dtype, ``int8``, or e.g. ``pca96-float16``."""
        codec, dtype = self.manifest.get("codec"), self.fingerprint["dtype"]
        if codec is None:
            return dtype
        return "int8" if codec["name"] == "int8" else f"{codec['name']}{codec['width']}-{dtype}"

    @property
    def tokens(self) -> int:
        """Rows stored, over every split."""
        return sum(int(self._load(self.path / name / "offsets.npy", mmap=True)[-1]) for name in self.manifest["splits"])

    @functools.cached_property
    def codec(self) -> codecs.Codec | None:
        """The codec that decodes this cache's rows (None: rows are the hidden states themselves)."""
        record = self.manifest.get("codec")
        if record is None:
            return None
        from safetensors.torch import load_file

        path = self.path / codecs.PARAMS_FILE
        try:
            return codecs.load(record["name"], load_file(str(path)))
        except Exception as err:  # safetensors raises its own error types for a damaged file
            raise self._damaged(f"cache file {path} is unreadable ({str(err).splitlines()[0][:200]})") from None

    def _damaged(self, what: str) -> UserError:
        return UserError(f"{what}; delete {self.path} and rerun to rebuild the cache")

    def _read_manifest(self, path: Path) -> dict:
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise self._damaged(f"cache manifest {path} is unreadable ({err})") from None
        if not isinstance(manifest, dict):
            raise self._damaged(f"cache manifest {path} is a JSON {type(manifest).__name__}, not an object")
        fp = manifest.get("fingerprint")
        if not isinstance(fp, dict):
            raise self._damaged(f"cache manifest {path} has no 'fingerprint' object")
        # Before any other field: a cache of another format is refused with how to rebuild it.
        version = fp.get("format")
        if version != FORMAT_VERSION:
            raise UserError(
                f"cache at {self.path} has format {version}, this version reads format {FORMAT_VERSION} "
                "(label-free, fingerprinted by the exact token ids): delete that folder and rerun to rebuild it")
        splits = manifest.get("splits")
        problems = []
        if not isinstance(splits, dict) or not all(isinstance(r, dict) for r in splits.values()):
            problems.append("no 'splits' object")
        if not isinstance(manifest.get("hidden_size"), int):
            problems.append("no integer 'hidden_size'")
        if fp.get("dtype") not in DTYPES:
            problems.append(f"fingerprint.dtype {fp.get('dtype')!r} is not one of {', '.join(DTYPES)}")
        features = fp.get("features")
        if not isinstance(features, dict) or not all(isinstance(n, int) for n in features.values()):
            problems.append("no 'fingerprint.features' object of counts")
        elif isinstance(splits, dict) and set(features) != set(splits):
            problems.append(f"splits {sorted(splits)} differ from the fingerprint's {sorted(features)}")
        codec = manifest.get("codec")
        if codec is not None and not (
                isinstance(codec, dict) and codec.get("name") in codecs.CODECS and codec.get("storage") in NUMPY_STORAGE
                and isinstance(codec.get("width"), int) and isinstance(codec.get("bytes"), int)
                and isinstance(codec.get("sha256"), str)):
            problems.append("a malformed 'codec' record")
        if problems:
            raise self._damaged(f"cache manifest {path} is malformed: {'; '.join(problems)}")
        return manifest

    def _load(self, path: Path, mmap: bool) -> np.ndarray:
        try:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise self._damaged(f"cache file {path} is unreadable or truncated ({err})") from None

    def _check_split(self, name: str, record: dict) -> None:
        """The cheap check of one split: sizes, shapes and offsets, without reading the hidden rows."""
        folder = self.path / name
        if not folder.is_dir():
            raise self._damaged(f"cache split folder {folder} is missing")
        files = record.get("files")  # absent in caches built before checksums were recorded
        if files is not None and not (isinstance(files, dict) and all(
                isinstance(files.get(f), dict) and isinstance(files[f].get("bytes"), int)
                and isinstance(files[f].get("sha256"), str) for f in ARRAYS)):
            raise self._damaged(f"cache manifest {self.path / MANIFEST} has a malformed 'splits.{name}.files'")
        for array in ARRAYS:
            path = folder / array
            if not path.is_file():
                raise self._damaged(f"cache file {path} is missing")
            if files is not None and path.stat().st_size != files[array]["bytes"]:
                raise self._damaged(
                    f"cache file {path} has {path.stat().st_size} bytes, the manifest records "
                    f"{files[array]['bytes']} (truncated or replaced)")
        offsets_path, hidden_path = folder / "offsets.npy", folder / "hidden.npy"
        offsets = self._load(offsets_path, mmap=False)
        hidden = self._load(hidden_path, mmap=True)
        n = self.fingerprint["features"][name]
        if offsets.dtype != np.int64 or offsets.shape != (n + 1,):
            raise self._damaged(f"cache file {offsets_path} holds {offsets.dtype} {offsets.shape}, "
                                f"expected int64 ({n + 1},) for the fingerprint's {n} features")
        if offsets[0] != 0:
            raise self._damaged(f"cache file {offsets_path} starts at {offsets[0]}, not 0")
        steps = np.diff(offsets)
        if (steps < 0).any():
            i = int(np.argmax(steps < 0))
            raise self._damaged(f"cache file {offsets_path} is not non-decreasing (feature {i} ends "
                                f"at row {offsets[i + 1]}, before it starts at row {offsets[i]})")
        name, width = self.storage
        dtype = np.dtype(NUMPY_STORAGE[name])
        if hidden.ndim != 2 or hidden.shape[1] != width or hidden.dtype != dtype:
            raise self._damaged(f"cache file {hidden_path} holds {hidden.dtype} {hidden.shape}, "
                                f"expected {dtype} rows of {width}")
        if offsets[-1] != hidden.shape[0]:
            raise self._damaged(f"cache file {offsets_path} ends at row {offsets[-1]}, "
                                f"but {hidden_path} has {hidden.shape[0]} rows")

    def verify(self) -> bool:
        """Recompute every array file's SHA-256 (a full read) and compare it with the manifest.

        Raises :class:`UserError` naming the first file that differs. Returns False, with a
        warning, when the cache predates checksums and so cannot be verified beyond the cheap check.
        """
        unverifiable = []
        codec = self.manifest.get("codec")
        if codec is not None:
            self._compare(self.path / codecs.PARAMS_FILE, codec["sha256"])
        for name, record in self.manifest["splits"].items():
            files = record.get("files")
            if files is None:
                unverifiable.append(name)
                continue
            for array in ARRAYS:
                self._compare(self.path / name / array, files[array]["sha256"])
        if unverifiable:
            logger.warning("cache %s records no checksums for split(s) %s (built before they were recorded): "
                           "only its structure was checked; rebuild it to make it verifiable",
                           self.path, ", ".join(unverifiable))
            return False
        return True

    def _compare(self, path: Path, sha256: str) -> None:
        try:
            digest = file_sha256(path)
        except OSError as err:
            raise self._damaged(f"cache file {path} is unreadable ({err.strerror})") from None
        if digest != sha256:
            raise self._damaged(f"cache file {path} is corrupt: its SHA-256 differs from the manifest's")

    @property
    def fingerprint(self) -> dict:
        return self.manifest["fingerprint"]

    def split(self, name: str) -> CachedSplit:
        if name not in self.manifest["splits"]:
            raise UserError(f"cache at {self.path} has no split '{name}' (it has {', '.join(self.manifest['splits'])})")
        return CachedSplit(self.path / name, self.storage[0], self.codec)

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
