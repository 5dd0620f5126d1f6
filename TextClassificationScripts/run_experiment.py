"""Run one text-classification experiment file: every requested mode for every seed.

    python TextClassificationScripts/run_experiment.py HyperparameterSelection/text_classification/minilm_l6_chemprot.yaml

Builds (or reuses) the cache of the frozen lower layers, trains each mode, evaluates on dev and
test, and writes ``results/text_classification/<dataset>/<experiment>.json`` plus the summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch

from cache_builder import build_cache, default_cache_dir
from recycling.batches import TokenizedSplit, make_loader
from recycling.config import CACHED_MODES, load_config
from recycling.encoders import load_encoder, tokenize_splits
from recycling.errors import UserError
from recycling.metrics import classification_scores
from recycling.models import build_classifier, trainable_parameters
from recycling.files import write_json
from recycling.results import provenance, rebuild_summary
from recycling.trainer import TrainSettings, evaluate, train
from text_classification.data import cache_inputs, load_dataset

logger = logging.getLogger("run_experiment")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="experiment YAML (see HyperparameterSelection/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set seeds=[0,1] (repeatable)")
    p.add_argument("--data-dir", default=os.environ.get("ER_DATA_DIR"), help="default: $ER_DATA_DIR")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--cache-root", default=os.environ.get("ER_CACHE_DIR", "caches"))
    return p.parse_args(argv)


def run_seed(mode, seed, config, base, splits, device) -> dict:
    """Train one model and evaluate it; ``splits`` maps train/dev/test to datasets for this mode."""
    model = build_classifier(mode, base, config.cut_layer, len(splits["label_names"]),
                             config.adapter_size, config.head_dropout, seed).to(device)
    settings = TrainSettings(config.learning_rate[mode], config.max_epochs, config.patience,
                             config.warmup_steps, config.weight_decay, config.grad_accum_steps)
    train_loader = make_loader(splits["train"], config.batch_size, True, seed, config.group_by_length)
    dev_loader = make_loader(splits["dev"], config.eval_batch_size, False, seed, config.group_by_length)
    test_loader = make_loader(splits["test"], config.eval_batch_size, False, seed, config.group_by_length)
    history = train(model, train_loader, dev_loader, settings, device)
    dev, test = evaluate(model, dev_loader, device), evaluate(model, test_loader, device)
    return {
        "seed": seed,
        "trainable_parameters": sum(p.numel() for p in trainable_parameters(model)),
        "history": vars(history),
        "dev": {**classification_scores(dev.gold, dev.pred), "loss": dev.loss},
        "test": {**classification_scores(test.gold, test.pred), "loss": test.loss},
        "inference_seconds": dev.seconds + test.seconds,
    }


def previous_result(out_path: Path, config: dict) -> dict | None:
    """The result file of an earlier, interrupted or narrower, invocation of this experiment.

    Only the lists of seeds and modes may differ: any other change makes the old runs incomparable.
    """
    if not out_path.is_file():
        return None
    old = json.loads(out_path.read_text())
    strip = lambda c: {k: v for k, v in c.items() if k not in ("seeds", "modes")}  # noqa: E731
    if strip(old["provenance"]["config"]) != strip(config):
        logger.warning("%s holds runs of a different configuration: they will be replaced", out_path)
        return None
    return old


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run(args) -> Path:
    config, sources = load_config(args.config, args.set)
    if not args.data_dir:
        raise UserError("no data directory: pass --data-dir or set ER_DATA_DIR")
    experiment = Path(args.config).stem
    out_path = Path(args.results_dir) / config.task / config.dataset / f"{experiment}.json"
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")

    # 1. data, tokenized once for the cache and the text baselines alike
    dataset = load_dataset(args.data_dir, config.dataset, config.text_field, config.label_field)
    dataset = dataset.head(config.max_examples)
    base, tokenizer = load_encoder(config.model)
    ids = tokenize_splits(tokenizer, {n: s.texts for n, s in dataset.splits.items()}, config.max_length)
    text_splits = {n: TokenizedSplit(ids[n], dataset.label_ids(n), tokenizer.pad_token_id or 0)
                   for n in dataset.splits}

    # 2. the cache of the frozen lower layers, built once and reused by every cached mode and seed
    cache, cached_splits = None, None
    if any(mode in CACHED_MODES for mode in config.modes):
        cache_dir = config.cache_dir or default_cache_dir(
            args.cache_root, config.task, config.dataset, config.model, config.cut_layer,
            config.max_length, config.cache_dtype)
        if config.max_examples is not None and not config.cache_dir:
            cache_dir = cache_dir.with_name(f"{cache_dir.name}-first{config.max_examples}")
        cache = build_cache(cache_dir, config.model, base, tokenizer, config.cut_layer,
                            cache_inputs(dataset, ids), max_length=config.max_length,
                            dtype=config.cache_dtype, batch_size=config.cache_batch_size,
                            device=device, extra={"label_names": dataset.label_names})
        cached_splits = {n: cache.split(n) for n in dataset.splits}

    # 3. every mode for every seed; seed-major, so an interrupted run has comparable pairs
    result = {
        "experiment": experiment,
        "complete": False,
        "provenance": provenance(config, sources, device),
        "label_names": dataset.label_names,
        "examples": {n: len(s.texts) for n, s in dataset.splits.items()},
        "cache": None if cache is None else {
            "path": str(cache.path), "build_seconds": cache.manifest["build_seconds"],
            "bytes": cache.nbytes(), "fingerprint": cache.fingerprint},
        "runs": {mode: [] for mode in config.modes},
    }
    previous = previous_result(out_path, result["provenance"]["config"]) or {"runs": {}, "cache": None}
    done = {(mode, run["seed"]): run for mode, runs in previous["runs"].items() for run in runs}
    result["cache"] = result["cache"] or previous["cache"]  # a narrower rerun may not need the cache
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
            splits = cached_splits if mode in CACHED_MODES else text_splits
            run = run_seed(mode, seed, config, base, {**splits, "label_names": dataset.label_names}, device)
            result["runs"][mode].append(run)
            write_json(out_path, result)
            rebuild_summary(Path(args.results_dir))

    for runs in result["runs"].values():
        runs.sort(key=lambda r: r["seed"])
    result["provenance"]["seeds"] = sorted({r["seed"] for runs in result["runs"].values() for r in runs})
    result["complete"] = True
    write_json(out_path, result)
    for row in rebuild_summary(Path(args.results_dir)):
        if row["experiment"] == experiment:
            logger.info("%s %s: test %s %.2f, epoch %.1fs, speedup %s", row["dataset"], row["mode"],
                        row["metric"], row["test_mean"], row["train_epoch_s"], row["train_speedup"] or "-")
    return out_path


if __name__ == "__main__":
    sys.exit(main())
