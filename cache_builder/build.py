"""Build a cache once, reuse it whenever the fingerprint matches, refuse it when it does not."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import recycling
from safetensors.torch import save_file

from cache_builder import codecs
from cache_builder.store import (ARRAYS, DTYPES, FORMAT_VERSION, MANIFEST, NO_ROOM, SPLIT_RECORD, ActivationCache,
                                 SplitWriter, file_records, fsync_file, human_size)
from recycling import distributed, encoders
from recycling.batches import pad_ids
from recycling.distributed import Processes
from recycling.errors import UserError
from recycling.files import file_sha256, fsync_dir, inside, locked, write_json
from recycling.results import device_name
from recycling.tasks import Features

logger = logging.getLogger(__name__)

@dataclass
class CacheInput:
    """Exactly what the lower layers see for one split: one row of token ids per feature."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None = None


def inputs_sha256(split: CacheInput) -> str:
    """A hash of the token ids (and segment ids) of every feature, in order."""
    digest = hashlib.sha256()
    for i, ids in enumerate(split.input_ids):
        digest.update(np.asarray(ids, dtype=np.int64).tobytes())
        digest.update(b"|" if split.token_type_ids is None else
                      np.asarray(split.token_type_ids[i], dtype=np.int64).tobytes() + b"|")
    return digest.hexdigest()


def codec_spec(name: str | None, dim: int | None, given: codecs.Codec | None = None) -> dict | None:
    """What a compressed cache's codes depend on: the codec, its size, and how it was fitted (on a
    seeded sample of the training split) or, for a codec given ready (a saved model's), its tensors."""
    if name is None:
        return None
    if name not in codecs.CODECS:
        raise UserError(f"codec must be one of {', '.join(codecs.CODECS)}, got '{name}'")
    spec = {"name": name, "dim": dim if name in codecs.DIM_CODECS else None}
    if given is not None:
        return spec | {"params_sha256": tensors_sha256(given.tensors())}
    return spec | {"fit": {"split": "train", "tokens": codecs.FIT_TOKENS, "seed": codecs.FIT_SEED}}


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode() + b"|" + tensors[key].float().numpy().tobytes())
    return digest.hexdigest()


def fingerprint(model_name: str, lower: torch.nn.Module, cut_layer: int, dtype: str,
                splits: dict[str, CacheInput], codec: dict | None = None) -> dict:
    """Everything the cached activations depend on, and nothing else.

    The token ids fed to the lower part stand for the data files, the tokenizer, the text field,
    the maximum length and the windowing together: change any of them and the ids change.
    ``codec`` is :func:`codec_spec`'s record (a plain cache has none, as before codecs existed).
    """
    return ({} if codec is None else {"codec": codec}) | {
        "format": FORMAT_VERSION,
        "model": model_name,
        "lower_weights_sha256": encoders.fingerprint_weights(lower),
        "cut_layer": cut_layer,
        "dtype": dtype,
        "inputs_sha256": {name: inputs_sha256(s) for name, s in sorted(splits.items())},
        "features": {name: len(s.input_ids) for name, s in sorted(splits.items())},
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


def default_cache_dir(cache_root: str | Path, task: str, dataset: str, model_name: str, cut_layer: int,
                      dtype: str, splits: dict[str, CacheInput], codec: dict | None = None) -> Path:
    """``<root>/<task>/<dataset>/<model>-k<cut>-<dtype>[-<codec>]-<hash of the inputs>``: other inputs
    (another text field, max length or window stride) or another codec get their own folder
    instead of a refusal."""
    slug = model_name.replace("/", "__").replace(":", "_")
    digest = hashlib.sha256(json.dumps({n: inputs_sha256(s) for n, s in sorted(splits.items())}).encode())
    tag = ""
    if codec is not None:
        tag = f"-{codec['name']}{codec['dim'] or ''}"
        if "params_sha256" in codec:
            tag += f"-p{codec['params_sha256'][:8]}"
    return Path(cache_root) / task / dataset / f"{slug}-k{cut_layer}-{dtype}{tag}-{digest.hexdigest()[:12]}"


def _reuse(cache_dir: Path, fp: dict) -> ActivationCache:
    cache = ActivationCache(cache_dir)  # the cheap check: a damaged cache is refused, naming the file
    fields = differing_fields(cache.fingerprint, fp)
    if fields:
        raise _refuse(cache_dir, cache.fingerprint, fp, fields)
    logger.info("reusing cache %s", cache_dir)
    return cache


def _read_json_object(path: Path) -> dict | None:
    """A JSON object an unfinished build recorded, or None if it is missing or unreadable."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        logger.warning("unreadable %s (%s)", path, err)
        return None
    return old if isinstance(old, dict) else None


def build_cache(cache_dir: str | Path, model_name: str, model, cut_layer: int, splits: dict[str, CacheInput],
                pad_id: int = 0, dtype: str = "float16", batch_size: int = 64, device: str | None = None,
                extra: dict | None = None, codec: str | None = None, codec_dim: int | None = None,
                codec_given: codecs.Codec | None = None, procs: Processes | None = None) -> ActivationCache:
    """Return the cache for these inputs at ``cache_dir``, building it only if it is missing.

    ``model`` comes from ``recycling.encoders.load_encoder(model_name)`` and is not modified;
    ``pad_id`` is the tokenizer's padding id. ``extra`` is recorded in the manifest, not compared.
    ``codec`` (with ``codec_dim`` for pca and autoencoder) stores compressed rows: the codec is
    fitted on a sample of the ``train`` split, or is ``codec_given`` (a saved model's) as it is.
    One job builds a given cache at a time (a lock file ``<cache_dir>.lock`` beside it, removed
    once the cache is complete); another waits, then reuses what the first built.

    Under ``accelerate launch`` (``procs``: default, this job's processes) every process calls
    this: the batches are dealt out in turn, each process writes its own features' rows, and the
    main process alone holds the lock and writes the records, so the cache is the one a single
    process builds, byte for byte. An interrupted build resumes with the rows every process finished.
    """
    procs = procs or distributed.processes()
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
    cache_dir = Path(cache_dir)
    lower = encoders.lower_part(model, cut_layer)
    spec = codec_spec(codec, codec_dim, codec_given)
    if spec is not None and codec_given is None and "train" not in splits:
        raise UserError(f"codec {codec} is fitted on the train split, and these inputs have none")
    fp = fingerprint(model_name, lower, cut_layer, dtype, splits, spec)

    # Reusing a complete cache needs no lock (it is never modified), nor a writable parent folder.
    # Every process follows what the main process finds.
    if procs.share((cache_dir / MANIFEST).is_file()):
        return _reuse(cache_dir, fp)
    lock = cache_dir.with_name(cache_dir.name + ".lock")
    with locked(lock, f"cache {cache_dir}") if procs.main else contextlib.nullcontext():
        # Whoever held the lock before may have just finished this very cache.
        if procs.share((cache_dir / MANIFEST).is_file()):
            cache = _reuse(cache_dir, fp)
        else:
            cache = _build_or_explain(cache_dir, model_name, lower, cut_layer, splits, fp, pad_id, dtype,
                                      batch_size, device, extra, codec_given, procs)
        # The cache is complete, so whoever still waits on this file will find the manifest and
        # only reuse it: the file can go. A failed or killed build leaves it for the next one.
        if procs.main:
            lock.unlink(missing_ok=True)
        return cache


def _build_or_explain(cache_dir: Path, *args) -> ActivationCache:
    # An empty folder is harmless (the publishing rename replaces it); anything else is not ours.
    if cache_dir.exists() and not (cache_dir.is_dir() and not any(cache_dir.iterdir())):
        raise UserError(f"{cache_dir} exists but is not a complete cache (no {MANIFEST}): "
                        "delete it or move it away, then rerun")
    try:
        return _build_locked(cache_dir, *args)
    except OSError as err:
        if err.errno not in NO_ROOM:
            raise
        raise UserError(f"not enough disk space for the cache at {cache_dir} ({err.strerror}): free some "
                        "and rerun; finished splits are kept") from None


def _build_locked(cache_dir: Path, model_name: str, lower, cut_layer: int, splits: dict[str, CacheInput], fp: dict,
                  pad_id: int, dtype: str, batch_size: int, device: str | None, extra: dict | None,
                  codec_given: codecs.Codec | None, procs: Processes) -> ActivationCache:
    partial = cache_dir.with_name(cache_dir.name + ".partial")
    if partial.is_symlink():  # never write a build through a link planted at our temporary name
        raise UserError(f"{partial} is a symbolic link; delete it, then rerun")
    fp_file = partial / "fingerprint.json"
    if procs.main:
        if partial.is_dir():
            old = _read_json_object(fp_file)
            if old != fp:
                logger.warning("discarding unfinished cache %s: %s", partial,
                               "built for other inputs" if old else "its fingerprint.json is missing or unreadable")
                shutil.rmtree(partial)
            else:
                logger.info("resuming unfinished cache %s", partial)
        partial.mkdir(parents=True, exist_ok=True)
        write_json(fp_file, fp)
    procs.wait()

    device = device or procs.device or ("cuda" if torch.cuda.is_available() else "cpu")
    lower.to(device)
    started = time.perf_counter()
    coder, codec_record = None, None
    if "codec" in fp:
        with procs.main_first():  # the main process fits and saves the codec; the others read it
            coder, error = _codec(partial, fp["codec"], codec_given, lower, splits, pad_id, dtype, batch_size,
                                  device)
        params = partial / codecs.PARAMS_FILE
        codec_record = {"name": coder.name, "dim": fp["codec"]["dim"], "width": coder.width,
                        "storage": "int8" if coder.name == "int8" else dtype,
                        "bytes": params.stat().st_size, "sha256": file_sha256(params), "fit_error": error}
        coder.to(device)
    stats = {}
    for name, split in splits.items():
        stats[name] = _build_split(partial, name, split, lower, pad_id, dtype, batch_size, device, coder, procs)
    seconds = time.perf_counter() - started
    if not procs.main:
        procs.wait()  # until the main process has published the cache
        return ActivationCache(cache_dir)

    manifest = {
        "fingerprint": fp,
        "splits": stats,
        "hidden_size": encoders.hidden_size(lower),
        **({} if codec_record is None else {"codec": codec_record}),
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
    fsync_dir(cache_dir.parent)  # a power cut must not undo the publish
    logger.info("built cache %s in %.1fs%s", cache_dir, seconds,
                f" ({procs.world} processes)" if procs.world > 1 else "")
    procs.wait()
    return ActivationCache(cache_dir)


def _codec(partial: Path, spec: dict, given: codecs.Codec | None, lower, splits: dict[str, CacheInput],
           pad_id: int, dtype: str, batch_size: int, device: str) -> tuple[codecs.Codec, dict | None]:
    """The codec of an unfinished build, and its round-trip error on the rows it was fitted on (None
    for a given codec): the one the build already saved (resuming: its fingerprint, and so how it
    was fitted, matched), the given one, or one fitted now; saved before any split."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = partial / codecs.PARAMS_FILE
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            error = (f.metadata() or {}).get("fit_error")
        return codecs.load(spec["name"], load_file(str(path))), error and json.loads(error)
    error = None
    if given is not None:
        coder = given
    else:
        started = time.perf_counter()
        sample = _fit_sample(splits["train"], lower, pad_id, batch_size, device)
        coder = codecs.fit(spec["name"], sample, spec["dim"])
        error = codecs.fit_error(coder, sample, DTYPES[dtype])
        logger.info("fitted codec %s%s on %d training rows in %.1fs (round trip: 1 - cosine %.2g, relative L2 "
                    "%.2g)", spec["name"], spec["dim"] or "", len(sample), time.perf_counter() - started,
                    error["one_minus_cosine"], error["relative_l2"])
    tmp = path.with_name(path.name + ".tmp")
    save_file(coder.tensors(), str(tmp), metadata=None if error is None else {"fit_error": json.dumps(error)})
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(partial)
    return coder, error


def _run_lower(lower, split: CacheInput, batch: list[int], pad_id: int, device: str) -> torch.Tensor:
    """The lower part's output ``[len(batch), longest, hidden]`` for the features ``batch`` of ``split``."""
    input_ids, mask = pad_ids([split.input_ids[i] for i in batch], pad_id)
    types = None
    if split.token_type_ids is not None:
        types = pad_ids([split.token_type_ids[i] for i in batch], 0)[0].to(device)
    return encoders.run_lower(lower, input_ids.to(device), mask.to(device), types)


def _fit_sample(split: CacheInput, lower, pad_id: int, batch_size: int, device: str) -> torch.Tensor:
    """Up to ``codecs.FIT_TOKENS`` float32 rows of the lower part's output on the training split:
    whole features, in a seeded random order."""
    lengths = [len(r) for r in split.input_ids]
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(codecs.FIT_SEED)).tolist()
    chosen, total = [], 0
    for i in order:
        if total >= codecs.FIT_TOKENS:
            break
        chosen.append(i)
        total += lengths[i]
    rows = []
    with torch.no_grad():  # not inference_mode: the autoencoder trains on these rows
        for start in range(0, len(chosen), batch_size):
            batch = chosen[start:start + batch_size]
            hidden = _run_lower(lower, split, batch, pad_id, device)
            rows.extend(hidden[row, : lengths[i]].float().cpu() for row, i in enumerate(batch))
    return torch.cat(rows)[: codecs.FIT_TOKENS]


def _build_split(partial: Path, name: str, split: CacheInput, lower, pad_id: int, dtype: str,
                 batch_size: int, device: str, coder: codecs.Codec | None = None,
                 procs: Processes = distributed.SINGLE) -> dict:
    """Write one split into ``partial/name``; a split folder only appears once it is complete.

    Returns the split's stats with its files' sizes and SHA-256, as the manifest records them (in
    the main process; the others' ``files`` are None). The batches are the same whatever the number
    of processes, dealt out in turn; each process marks its share done in the unfinished folder, so
    a resumed build (with as many processes) recomputes only the shares not marked.
    """
    final = partial / name
    ids = split.input_ids
    lengths = [len(r) for r in ids]
    stats = {"features": len(ids), "tokens": int(sum(lengths))}
    files = procs.share(_finished_files(final, stats) if procs.main and final.is_dir() else None)
    if files is not None:
        return {**stats, "files": files}
    tmp = partial / (name + ".tmp")
    width = encoders.hidden_size(lower) if coder is None else coder.width
    if coder is not None and coder.name == "int8":
        dtype = "int8"
    if procs.main:
        if final.is_dir():
            logger.warning("rebuilding split %s of unfinished cache %s: its record is missing or does not match",
                           name, partial)
            shutil.rmtree(final)
        _allocate(tmp, lengths, width, dtype, procs.world)
    procs.wait()
    done = tmp / f"done-{procs.rank}-of-{procs.world}"
    if done.exists():
        logger.info("split %s: rows of process %d were written before the interruption", name, procs.rank)
    else:
        # Longest first: similar lengths share a batch (little padding), and memory peaks at once.
        order = sorted(range(len(ids)), key=lambda i: -lengths[i])
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)][procs.rank::procs.world]
        writer = SplitWriter.reopen(tmp, dtype)
        with torch.inference_mode():
            for batch in tqdm(batches, desc=f"caching {name}", unit="batch", disable=None if procs.main else True):
                hidden = _run_lower(lower, split, batch, pad_id, device)
                if coder is not None:
                    hidden = coder.encode(hidden)
                for row, i in enumerate(batch):
                    writer.write(i, hidden[row, : lengths[i]])
        writer.close()  # fsyncs both arrays
        done.touch()
        fsync_dir(tmp)
    procs.wait()
    if not procs.main:
        return {**stats, "files": None}
    files = file_records(tmp)
    write_json(tmp / SPLIT_RECORD, {**stats, "files": files})  # fsyncs it and the folder
    for note in (*tmp.glob("done-*"), tmp / "layout.json"):  # the build's notes, not part of the cache
        note.unlink()
    os.replace(tmp, final)
    fsync_dir(partial)
    return {**stats, "files": files}


def _allocate(tmp: Path, lengths: list[int], width: int, dtype: str, processes: int) -> None:
    """The unfinished split's arrays, allocated whole, unless an interrupted build by as many
    processes left them (its ``layout.json`` is written only once they exist)."""
    layout = {"tokens": int(sum(lengths)), "features": len(lengths), "width": width, "dtype": dtype,
              "processes": processes}
    if tmp.exists():
        if _read_json_object(tmp / "layout.json") == layout:
            return
        shutil.rmtree(tmp)
    try:
        SplitWriter(tmp, lengths, width, dtype).close()
    except OSError as err:
        if err.errno not in NO_ROOM:
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # give back what was reserved before the failure
        partial = tmp.parent
        cache_dir = partial.with_name(partial.name.removesuffix(".partial"))
        free = shutil.disk_usage(partial).free
        raise UserError(f"not enough disk space for the cache at {cache_dir}: need "
                        f"{human_size(SplitWriter.nbytes(lengths, width, dtype))} for split {tmp.stem}, "
                        f"{human_size(free)} free ({err.strerror})") from None
    write_json(tmp / "layout.json", layout)


def _finished_files(folder: Path, stats: dict) -> dict | None:
    """The recorded files of a split an earlier build published, if they still match their record.

    Only sizes are compared (a resumed build must not reread GBs); a split from a builder that
    kept no record is rebuilt rather than trusted.
    """
    record = _read_json_object(folder / SPLIT_RECORD)
    if record is None or {k: record.get(k) for k in stats} != stats:
        return None
    files = record.get("files")
    try:
        if all(files[a]["bytes"] == (folder / a).stat().st_size for a in ARRAYS):
            return files
    except (OSError, KeyError, TypeError):
        pass
    return None


def task_cache(features: dict[str, Features], *, task: str, dataset: str, model_name: str, model, cut_layer: int,
               pad_id: int, dtype: str, batch_size: int, cache_root: str | Path, cache_dir: str | Path | None = None,
               device: str | None = None, codec: str | None = None, codec_dim: int | None = None,
               codec_given: codecs.Codec | None = None) -> ActivationCache:
    """The cache of a task's features, at ``cache_dir`` or at its default place under ``cache_root``.

    The runner and ``python -m cache_builder`` both come here, so they find the same cache.
    """
    splits = {name: CacheInput(f.input_ids, f.token_type_ids) for name, f in features.items()}
    spec = codec_spec(codec, codec_dim, codec_given)
    path = cache_dir or inside(cache_root, default_cache_dir(cache_root, task, dataset, model_name, cut_layer,
                                                             dtype, splits, spec), "the cache folder")
    return build_cache(path, model_name, model, cut_layer, splits, pad_id=pad_id, dtype=dtype,
                       batch_size=batch_size, device=device, codec=codec, codec_dim=codec_dim,
                       codec_given=codec_given)
