"""The experiment runner shared by every task: config -> data -> features -> cache -> modes x seeds -> results.

A per-task script is ``parse_args()`` + ``main()`` around :func:`run_experiment`: it reads an
experiment YAML, loads the data through the task, tokenizes it once for the cache and the text
modes alike, builds (or reuses) the cache of the frozen lower layers, trains every mode for every
seed, and writes ``<results>/<task>/<dataset>/<experiment>.json`` and the summary after each run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch

from cache_builder import CacheInput, task_cache
from cache_builder.build import inputs_sha256
from recycling import cross_model, distributed, encoders, hostmem, saved, sweep
from recycling.batches import FeatureDataset, make_loader
from recycling.config import (CACHED_MODES, IGNORED_BY, NOT_COMPUTATION, SOURCE_MODES, ExperimentConfig,
                              check_against_model, load_config, recorded_defaults)
from recycling.encoders import load_encoder
from recycling.errors import UserError, exit_code
from recycling.files import inside, locked, writable_dir, write_json
from recycling.models import UpperSettings, build_model, trainable_parameters
from recycling.results import LOCKS, device_name, git_sha, provenance, read_result, rebuild_summary
from recycling.tasks import Features, Task, get_task
from recycling.trainer import Checkpoint, Evaluation, TrainSettings, evaluate, train

logger = logging.getLogger("recycling.runner")

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "dev", "test")


def parse_args(description: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="experiment YAML (see HyperparameterSelection/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set seeds=[0,1] (repeatable)")
    p.add_argument("--data-dir", default=os.environ.get("ER_DATA_DIR"), help="default: $ER_DATA_DIR")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--cache-root", default=os.environ.get("ER_CACHE_DIR", "caches"))
    p.add_argument("--checkpoint-dir", default=os.environ.get("ER_CHECKPOINT_DIR", "checkpoints"),
                   help="where runs keep their end-of-epoch state until their result is written")
    p.add_argument("--resume", action="store_true",
                   help="continue runs killed mid-training from their last finished epoch")
    p.add_argument("--save-models", metavar="DIR", nargs="?", const="models",
                   help="save every trained model under DIR/<task>/<dataset>/<experiment>/<mode>-seed<seed> "
                        "(default DIR: models), for `python -m recycling.predict`")
    return p.parse_args(argv)


def main(task: str, args: argparse.Namespace) -> int:
    """Run one experiment file of ``task``; bad input is one ``error:`` line and exit code 2."""
    # Under accelerate launch the other processes log only warnings: the main one reports the job.
    level = logging.INFO if distributed.processes().main else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hostmem.return_freed_memory()
    return exit_code(lambda: run_experiment(task, args))


def experiment_name(config_path: str | Path, task: str) -> str:
    """Files under ``HyperparameterSelection/<task>/`` are named by their path there; others by their
    path relative to the working directory, folders joined by ``__`` so names cannot collide."""
    path = Path(config_path).resolve()
    for base in (ROOT / "HyperparameterSelection" / task, Path.cwd().resolve()):
        if path.is_relative_to(base):
            return "__".join(path.relative_to(base).with_suffix("").parts)
    return "__".join(path.with_suffix("").parts[1:])


def load_features(task: Task, data, tokenizer, config: ExperimentConfig) -> dict[str, Features]:
    return {split: task.features(data, split, tokenizer, config) for split in SPLITS}


def cache_of(config: ExperimentConfig, features: dict[str, Features], base, tokenizer, cache_root, device):
    """The experiment's cache, built or reused; checked whole (and, with ``verify_cache``, byte for byte).

    The split itself is checked first: an encoder whose layout the split does not reproduce (an
    unsupported variant, or remote code declaring a known type) is refused before it trains wrong.
    """
    difference = encoders.check_split(base, config.cut_layer)
    logger.info("split at layer %d reproduces %s (max difference %.1e)", config.cut_layer, config.model, difference)
    cache = _task_cache(config, features, base, tokenizer, cache_root, device)
    if config.verify_cache:
        procs = distributed.processes()
        if procs.main:
            cache.verify()
            logger.info("cache %s verified: every checksum matches", cache.path)
        procs.wait()
    return cache


def _task_cache(config: ExperimentConfig, features: dict[str, Features], base, tokenizer, cache_root, device):
    return task_cache(features, task=config.task, dataset=config.dataset, model_name=config.model, model=base,
                      cut_layer=config.cut_layer, pad_id=tokenizer.pad_token_id or 0, dtype=config.cache_dtype,
                      batch_size=config.cache_batch_size, cache_root=cache_root, cache_dir=config.cache_dir,
                      device=device, codec=config.cache_codec, codec_dim=config.cache_codec_dim)


def cache_record(cache) -> dict:
    """What a result file records of a cache its runs read."""
    return {"path": str(cache.path), "build_seconds": cache.manifest["build_seconds"], "bytes": cache.nbytes(),
            "tokens": cache.tokens, "codec": cache.label,
            "codec_fit_error": (cache.manifest.get("codec") or {}).get("fit_error"), "fingerprint": cache.fingerprint}


def train_model(mode: str, seed: int, config: ExperimentConfig, task: Task, data, base, splits: dict,
                features: dict[str, Features], device, checkpoint: Checkpoint | None = None):
    """A fresh model for ``mode`` trained on ``splits["train"]`` (datasets for this mode), the epoch
    kept chosen on ``splits["dev"]``; returns ``(model, history)``."""
    source = splits["train"].source
    model = build_model(mode, base, config.cut_layer, lambda: task.head(data, base, config),
                        UpperSettings.of(config, source and source.size), seed)
    model.codec = splits["train"].codec
    model.to(device)
    if config.compile:
        model.compile(dynamic=True)  # in place: parameter names, and so saved models, are unchanged
    settings = TrainSettings(config.learning_rate[mode], config.max_epochs, config.patience, config.warmup_steps,
                             config.warmup_ratio, config.weight_decay, config.grad_accum_steps, config.precision,
                             config.prefetch_batches, config.max_grad_norm)
    pin = torch.device(device).type == "cuda"
    procs = distributed.processes()
    train_loader = make_loader(splits["train"], config.batch_size, True, seed, config.group_by_length, pin,
                               config.length_group_batches, procs)
    dev_loader = make_loader(splits["dev"], config.eval_batch_size, False, seed, config.group_by_length, pin,
                             procs=procs)
    dev_score = None
    if config.select_on == "dev_metric":
        dev_score = lambda ev: task.score(data, "dev", features["dev"], ev.outputs)[config.metric]  # noqa: E731
    return model, train(model, train_loader, dev_loader, settings, device, dev_score, checkpoint, procs)


def evaluate_split(model, split: str, config: ExperimentConfig, splits: dict, device) -> Evaluation:
    procs = distributed.processes()
    loader = make_loader(splits[split], config.eval_batch_size, False, group_by_length=config.group_by_length,
                         pin_memory=torch.device(device).type == "cuda", procs=procs)
    return evaluate(model, loader, device, config.precision, config.prefetch_batches, procs)


def inputs_identity(features: dict[str, Features], base) -> dict:
    """SHA-256s of what the runs learn from besides the config: every split's token ids, segment ids
    and targets, and the pretrained weights (a local model folder or the data may change in place)."""
    digest = hashlib.sha256()
    for split in SPLITS:
        f = features[split]
        digest.update(inputs_sha256(CacheInput(f.input_ids, f.token_type_ids)).encode())
        digest.update(json.dumps(f.targets, sort_keys=True, default=lambda v: v.tolist()).encode())
    return {"data_sha256": digest.hexdigest(), "model_sha256": encoders.fingerprint_weights(base)}


def run_identity(mode: str, seed: int, config: ExperimentConfig, inputs: dict) -> dict:
    """What one run computes: a checkpoint continues only the run with this identity."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_COMPUTATION}
    return {"mode": mode, "seed": seed, **settings, **inputs}


def run_one(mode: str, seed: int, config: ExperimentConfig, task: Task, data, base, splits: dict,
            features: dict[str, Features], device, where: dict, checkpoint: Checkpoint | None = None,
            save_to: Path | None = None, lower_sha: str | None = None) -> dict:
    """Train one model and evaluate it; ``splits`` maps train/dev/test to datasets for this mode."""
    start = time.perf_counter()
    model, history = train_model(mode, seed, config, task, data, base, splits, features, device, checkpoint)
    if save_to is not None and distributed.processes().main:
        saved.save(save_to, model, mode, config, task.describe(data), lower_sha)
    dev, test = (evaluate_split(model, s, config, splits, device) for s in ("dev", "test"))
    return {
        "seed": seed,
        "seconds": time.perf_counter() - start,  # the whole run: training, dev passes, saving, inference
        "trainable_parameters": sum(p.numel() for p in trainable_parameters(model)),
        "history": dataclasses.asdict(history),
        "dev": {**task.score(data, "dev", features["dev"], dev.outputs), "loss": dev.loss},
        "test": {**task.score(data, "test", features["test"], test.outputs), "loss": test.loss},
        "inference_seconds": dev.seconds + test.seconds,
        **where,  # per run: a resumed experiment may continue on another machine or commit
    }


def computation_differs(old: dict, new: dict, modes) -> list[str]:
    """Keys whose values change what the earlier runs of ``modes`` computed; keys an old file lacks
    mean their default (or, for a key whose default changed, the value the code used before the
    key existed). A key no mode of ``modes`` reads (``IGNORED_BY``), or the rate of another mode,
    does not count: adding ``lora`` runs does not invalidate ``full`` runs."""
    defaults = recorded_defaults()
    differ = []
    for key, value in new.items():
        if key in NOT_COMPUTATION or all(key in IGNORED_BY[m] for m in modes):
            continue
        before = old.get(key, defaults.get(key))
        if key == "learning_rate":
            before, value = ({m: rates.get(m) for m in modes} for rates in (before or {}, value))
        if before != value:
            differ.append(key)
    return sorted(differ)


def previous_result(out_path: Path, config: dict, inputs: dict) -> dict | None:
    """The result file of an earlier, interrupted or narrower, invocation of this experiment.

    One whose runs computed something else (other settings, data or pretrained weights) is moved
    aside (never deleted) and a new file started. Files from before inputs were recorded count as
    matching them.
    """
    if not out_path.is_file():
        return None
    try:
        old = read_result(out_path)
    except UserError as err:
        aside = out_path.with_name(f"{out_path.name}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(out_path, aside)
        logger.warning("%s; moved to %s; starting a new file", err, aside.name)
        return None
    recorded = old["provenance"].get("inputs", inputs)
    modes = [mode for mode, runs in old["runs"].items() if runs]
    differ = computation_differs(old["provenance"]["config"], config, modes) + sorted(
        k for k in inputs if recorded.get(k) != inputs[k])
    if differ:
        aside = out_path.with_name(f"{out_path.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(out_path, aside)
        logger.warning("%s holds runs with other %s: moved to %s; starting a new file",
                       out_path, ", ".join(differ), aside.name)
        return None
    return old


def run_experiment(expected_task: str, args: argparse.Namespace) -> Path:
    config, sources = load_config(args.config, args.set)
    if config.task != expected_task:
        raise UserError(f"{args.config}: task '{config.task}' does not match this script's task '{expected_task}'")
    if not args.data_dir:
        raise UserError("no data directory: pass --data-dir or set ER_DATA_DIR")
    task = get_task(config.task)
    experiment = experiment_name(args.config, config.task)
    results_dir = Path(args.results_dir)
    procs = distributed.processes()
    # Under a launcher each process has its own device (cuda:<local rank>, or the CPU).
    device = procs.device if procs.world > 1 else config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # The code this process runs is the checkout as it was at the start, whatever is committed later.
    where = {"device": device_name(device), "git_sha": git_sha()}
    if procs.world > 1:
        where["processes"] = procs.world  # data-parallel processes of each run

    # 1. data, tokenized once for the cache and the text modes alike
    data = task.load(args.data_dir, config)
    base, tokenizer = load_encoder(config.model, config.trust_remote_code)
    check_against_model(config, base, tokenizer)
    features = load_features(task, data, tokenizer, config)
    if config.sweep is None:
        return _run_one_experiment(args, config, sources, task, experiment, results_dir, device, where, data, base,
                                   tokenizer, features)
    grid = sweep.points(config, sources["sweep"])
    for point in grid:
        check_against_model(point.config, base, tokenizer)
    logger.info("%s: a sweep of %d points", experiment, len(grid))
    files = []
    for point in grid:
        point_sources = sources | {key: sources["sweep"] for key in point.values}
        files.append(_run_one_experiment(args, point.config, point_sources, task, f"{experiment}@{point.name}",
                                         results_dir, device, where, data, base, tokenizer, features))
    out_path = results_dir / "sweeps" / config.task / config.dataset / f"{experiment}.json"
    if not procs.main:  # the main process wrote the points' files and writes the sweep's
        return out_path
    summary = sweep.summarize(experiment, config.sweep, grid, files, device)
    write_json(inside(results_dir, out_path, "the sweep file"), summary)
    for line in sweep.describe(summary):
        logger.info("%s: %s", experiment, line)
    return out_path


def _run_one_experiment(args, config: ExperimentConfig, sources: dict, task: Task, experiment: str, results_dir: Path,
                        device, where: dict, data, base, tokenizer, features: dict[str, Features]) -> Path:
    out_path = results_dir / config.task / config.dataset / f"{experiment}.json"
    # One process per experiment (taken once the inputs are known to be good, so bad input writes
    # nothing): a second one would interleave its runs into the same file.
    inside(results_dir, out_path, "the result file")
    lock = inside(results_dir, results_dir / LOCKS / config.task / config.dataset / f"{experiment}.lock",
                  "the lock file")
    main = distributed.processes().main
    with locked(lock, f"experiment {experiment} ({out_path})", wait=False) if main else contextlib.nullcontext():
        return _run_locked(args, config, sources, task, experiment, results_dir, out_path, device, where, data,
                           base, tokenizer, features)


def _run_locked(args, config: ExperimentConfig, sources: dict, task: Task, experiment: str, results_dir: Path,
                out_path: Path, device, where: dict, data, base, tokenizer, features: dict[str, Features]) -> Path:
    run_dir = Path(config.task) / config.dataset / experiment
    # Every folder this experiment writes to, checked before hours of work depend on it.
    checkpoints = inside(args.checkpoint_dir, writable_dir(args.checkpoint_dir, "--checkpoint-dir") / run_dir,
                         "the checkpoint folder")
    models_dir = None
    if args.save_models:
        models_dir = inside(args.save_models, writable_dir(args.save_models, "--save-models") / run_dir,
                            "the model folder")
    if any(mode in CACHED_MODES + SOURCE_MODES for mode in config.modes) and not config.cache_dir:
        writable_dir(args.cache_root, "--cache-root")
    inputs = inputs_identity(features, base)
    pad_id = tokenizer.pad_token_id or 0
    text_splits = {s: FeatureDataset(features[s], pad_id) for s in SPLITS}

    # 2. the cache of the frozen lower layers, built once and reused by every cached mode and seed
    cache, cached_splits = None, None
    if any(mode in CACHED_MODES for mode in config.modes):
        cache = cache_of(config, features, base, tokenizer, args.cache_root, device)
        cached_splits = {s: FeatureDataset(features[s], pad_id, cache.split(s)) for s in SPLITS}
    # ... and, for cross_model, the cache of the source model's final states, in this model's tokens
    source_cache, source_splits = None, None
    if any(mode in SOURCE_MODES for mode in config.modes):
        aligned, source_cache = cross_model.source_splits(config, task, data, features, tokenizer,
                                                          cache_root=args.cache_root, device=device,
                                                          verify=config.verify_cache)
        source_splits = {s: FeatureDataset(features[s], pad_id, source=aligned[s]) for s in SPLITS}

    # 3. every mode for every seed; seed-major, so an interrupted run has comparable pairs
    result = {
        "experiment": experiment,
        "complete": False,
        "provenance": provenance(config, sources, device),
        **task.describe(data),
        "cache": None if cache is None else cache_record(cache),
        **({} if source_cache is None else {"source_cache": cache_record(source_cache)}),
        "runs": {mode: [] for mode in config.modes},
    }
    result["provenance"]["inputs"] = inputs
    # Only the main process reads (and maybe moves aside) the earlier file; the others follow it.
    procs = distributed.processes()
    previous = procs.share(previous_result(out_path, result["provenance"]["config"], inputs) if procs.main else None)
    previous = previous or {"runs": {}, "cache": None}
    done = {(mode, run["seed"]): run for mode, runs in previous["runs"].items() for run in runs}
    result["cache"] = result["cache"] or previous["cache"]  # a narrower rerun may not need the cache
    if previous.get("source_cache") and not result.get("source_cache"):
        result["source_cache"] = previous["source_cache"]
    for (mode, seed), run in done.items():  # keep earlier runs beyond this invocation's seeds and modes
        if mode not in config.modes or seed not in config.seeds:
            result["runs"].setdefault(mode, []).append(run)
    for seed in config.seeds:
        for mode in config.modes:
            if (mode, seed) in done:
                logger.info("%s: mode %s, seed %d already in %s", experiment, mode, seed, out_path)
                result["runs"][mode].append(done[mode, seed])
                continue
            logger.info("%s: mode %s, seed %d", experiment, mode, seed)
            splits = cached_splits if mode in CACHED_MODES else source_splits if mode in SOURCE_MODES else text_splits
            checkpoint = Checkpoint(checkpoints / f"{mode}-seed{seed}.pt", run_identity(mode, seed, config, inputs),
                                    args.resume)
            if checkpoint.path.is_file() and not args.resume:
                logger.warning("%s is from an earlier, unfinished run; starting over (--resume continues it)",
                               checkpoint.path)
            save_to = models_dir / f"{mode}-seed{seed}" if models_dir else None
            if save_to is not None and save_to.exists() and procs.main:  # the model of a run kept aside stays with it
                aside = save_to.with_name(f"{save_to.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
                os.replace(save_to, aside)
                logger.warning("%s held an earlier model of this run: moved to %s", save_to, aside.name)
            # What a saved model's cached input must come from: this model's lower part, or the source model.
            read = cache if mode in CACHED_MODES else source_cache if mode in SOURCE_MODES else None
            lower_sha = read.fingerprint["lower_weights_sha256"] if read is not None else None
            result["runs"][mode].append(run_one(mode, seed, config, task, data, base, splits, features, device,
                                                where, checkpoint, save_to, lower_sha))
            if procs.main:
                write_json(out_path, result)
                checkpoint.path.unlink(missing_ok=True)  # the result holds what it was kept for
                rebuild_summary(results_dir)

    for runs in result["runs"].values():
        runs.sort(key=lambda r: r["seed"])
    result["provenance"]["seeds"] = sorted({r["seed"] for runs in result["runs"].values() for r in runs})
    result["complete"] = True
    if not procs.main:
        return out_path
    write_json(out_path, result)
    for row in rebuild_summary(results_dir):
        if row["experiment"] == experiment and row["dataset"] == config.dataset:
            logger.info("%s %s: test %s %.2f, epoch %.1fs, speedup %s", row["dataset"], row["mode"],
                        row["metric"], row["test_mean"], row["train_epoch_s"], row["train_speedup"] or "-")
    return out_path
