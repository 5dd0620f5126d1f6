"""Build a cache once, reuse it whenever the fingerprint matches, refuse it when it does not."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

import recycling
from cache_builder.store import DTYPES, MANIFEST, ActivationCache, SplitWriter
from recycling import encoders
from recycling.errors import UserError
from recycling.files import file_sha256, write_json
from recycling.results import device_name

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class SplitInput:
    input_ids: list[list[int]]  # from recycling.encoders.tokenize, so text runs see the same ids
    labels: list[int]
    source: Path  # the file the split was read from; its hash goes into the fingerprint


def fingerprint(model_name: str, lower: torch.nn.Module, tokenizer, cut_layer: int,
                max_length: int, dtype: str, splits: dict[str, SplitInput]) -> dict:
    """Everything the cached activations depend on, and nothing else."""
    return {
        "format": FORMAT_VERSION,
        "model": model_name,
        "lower_weights_sha256": encoders.fingerprint_weights(lower),
        "tokenizer_sha256": encoders.fingerprint_tokenizer(tokenizer),
        "cut_layer": cut_layer,
        "max_length": max_length,
        "dtype": dtype,
        "data": {name: file_sha256(s.source) for name, s in sorted(splits.items())},
        "examples": {name: len(s.input_ids) for name, s in sorted(splits.items())},
    }


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing_fields(old: dict, new: dict) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _refuse(path: Path, old: dict, new: dict, fields: list[str]) -> UserError:
    a, b = _flatten(old), _flatten(new)
    what = "; ".join(f"{f}: cache has {a.get(f)!r}, this run has {b.get(f)!r}" for f in fields)
    return UserError(
        f"cache at {path} was built for different inputs ({what}); "
        "delete that folder or choose another cache_dir"
    )


def default_cache_dir(cache_root: str | Path, task: str, dataset: str, model_name: str,
                      cut_layer: int, max_length: int, dtype: str) -> Path:
    slug = model_name.replace("/", "__").replace(":", "_")
    return Path(cache_root) / task / dataset / f"{slug}-k{cut_layer}-len{max_length}-{dtype}"


def build_cache(cache_dir: str | Path, model_name: str, model, tokenizer, cut_layer: int,
                splits: dict[str, SplitInput], max_length: int = 512, dtype: str = "float16",
                batch_size: int = 64, device: str | None = None,
                extra: dict | None = None) -> ActivationCache:
    """Return the cache for these inputs at ``cache_dir``, building it only if it is missing.

    ``model`` and ``tokenizer`` come from ``recycling.encoders.load_encoder(model_name)``; the
    model is not modified. ``extra`` is recorded in the manifest (e.g. label names), not compared.
    """
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
    cache_dir = Path(cache_dir)
    lower = encoders.lower_part(model, cut_layer)
    fp = fingerprint(model_name, lower, tokenizer, cut_layer, max_length, dtype, splits)

    if (cache_dir / MANIFEST).is_file():
        cache = ActivationCache(cache_dir)
        fields = differing_fields(cache.fingerprint, fp)
        if fields:
            raise _refuse(cache_dir, cache.fingerprint, fp, fields)
        logger.info("reusing cache %s", cache_dir)
        return cache

    partial = cache_dir.with_name(cache_dir.name + ".partial")
    fp_file = partial / "fingerprint.json"
    if partial.is_dir():
        old = json.loads(fp_file.read_text()) if fp_file.is_file() else {}
        if old != fp:
            logger.warning("discarding unfinished cache %s built for other inputs", partial)
            shutil.rmtree(partial)
        else:
            logger.info("resuming unfinished cache %s", partial)
    partial.mkdir(parents=True, exist_ok=True)
    write_json(fp_file, fp)

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lower.to(device)
    started = time.perf_counter()
    stats = {}
    for name, split in splits.items():
        stats[name] = _build_split(partial, name, split, lower, tokenizer.pad_token_id, max_length, dtype,
                                   batch_size, device)
    seconds = time.perf_counter() - started

    manifest = {
        "fingerprint": fp,
        "splits": stats,
        "hidden_size": encoders.hidden_size(lower),
        "build_seconds": round(seconds, 3),
        "device": device_name(device),
        "package_version": recycling.__version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
    write_json(partial / MANIFEST, manifest)
    os.replace(partial, cache_dir)
    logger.info("built cache %s in %.1fs", cache_dir, seconds)
    return ActivationCache(cache_dir)


def _build_split(partial: Path, name: str, split: SplitInput, lower, pad_id: int | None, max_length: int,
                 dtype: str, batch_size: int, device: str) -> dict:
    """Write one split into ``partial/name``; a split folder only appears once it is complete."""
    final = partial / name
    ids = split.input_ids
    lengths = [len(r) for r in ids]
    if max(lengths) > max_length:
        raise ValueError(f"{name}: token ids longer than max_length={max_length}; tokenize with it")
    stats = {"examples": len(ids), "tokens": int(sum(lengths))}
    if final.is_dir():
        return stats
    tmp = partial / (name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    writer = SplitWriter(tmp, lengths, split.labels, encoders.hidden_size(lower), dtype)
    # Longest first: similar lengths share a batch (little padding), and memory peaks at once.
    order = sorted(range(len(ids)), key=lambda i: -lengths[i])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    with torch.inference_mode():
        for batch in tqdm(batches, desc=f"caching {name}", unit="batch", disable=None):
            input_ids, mask = encoders.pad_ids([ids[i] for i in batch], pad_id or 0)
            hidden = encoders.run_lower(lower, input_ids.to(device), mask.to(device))
            for row, i in enumerate(batch):
                writer.write(i, hidden[row, : lengths[i]])
    writer.close()
    os.replace(tmp, final)
    return stats
