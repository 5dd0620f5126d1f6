"""Train and evaluate extractive QA on SQuAD-format files in any mode, or evaluate a saved model.

    python run_squad.py --train-file train-v1.1.json --eval-file dev-v1.1.json \\
        --model offline:all-MiniLM-L6-v2 --cut-layer 2 --mode semi_frozen --output-dir out --save
    python run_squad.py --eval-only --load out/model --eval-file dev-v1.1.json --output-dir out-eval

Model selection uses a held-out slice of the training file's articles (``dev_fraction``), since
the evaluation file (SQuAD's official dev set) has no public counterpart to tune on. Writes
``predictions.json`` (``{question id: answer}``, the official format) and ``metrics.json``
(exact match, F1, timings, provenance) to the output directory; ``--save`` adds the trained
upper layers and head under ``<output-dir>/model`` (safetensors), which ``--eval-only --load``
reads back.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import torch

from qa.data import QaDataset, hold_out, read_squad
from recycling import hostmem, runner, saved
from recycling.batches import FeatureDataset
from recycling.config import CACHED_MODES, check_against_model, load_config
from recycling.encoders import load_encoder
from recycling.errors import UserError, exit_code
from recycling.files import write_json
from recycling.results import device_name, git_sha
from recycling.tasks import get_task

DEFAULTS = Path(__file__).resolve().parent / "HyperparameterSelection" / "qa" / "defaults.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-file", help="SQuAD-format training file (not needed with --eval-only)")
    p.add_argument("--eval-file", required=True, help="SQuAD-format file to evaluate on (e.g. dev-v1.1.json)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--model", help="hub id, local folder or offline:<name>")
    p.add_argument("--cut-layer", type=int, help="layers below this one are frozen and cached")
    p.add_argument("--mode", default="semi_frozen", choices=["full", "semi_frozen", "adapters", "adapters_full"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=str(DEFAULTS), help="YAML with the training settings (default: QA defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    p.add_argument("--save", action="store_true", help="save the trained model to <output-dir>/model")
    p.add_argument("--eval-only", action="store_true", help="evaluate the saved model given by --load")
    p.add_argument("--load", help="folder of a saved model (with --eval-only)")
    p.add_argument("--cache-root", default=os.environ.get("ER_CACHE_DIR", "caches"))
    return p.parse_args(argv)


def settings(args):
    """The run's config (the YAML, then these flags, then --set), or a saved model's info and config."""
    if args.eval_only:
        if not args.load:
            raise UserError("--eval-only needs --load FOLDER")
        ignored = [flag for flag, given in (("--model", args.model), ("--cut-layer", args.cut_layer),
                                            ("--set", args.set), ("--train-file", args.train_file)) if given]
        if ignored:
            raise UserError(f"--eval-only evaluates the saved model as it was trained: drop {', '.join(ignored)}")
        info, config = saved.read_info(args.load)
        if config.task != "qa":
            raise UserError(f"{args.load} is a {config.task} model, not a qa model")
        return info, config
    missing = [flag for flag, value in (("--train-file", args.train_file), ("--model", args.model),
                                        ("--cut-layer", args.cut_layer)) if value is None]
    if missing:
        raise UserError(f"training needs {', '.join(missing)}")
    # Quoted: a file named 2024.json or "a #b.json" must give the dataset name it shows, not YAML's reading.
    flags = [f"dataset={json.dumps(Path(args.train_file).stem)}", f"model={json.dumps(args.model)}",
             f"cut_layer={args.cut_layer}",
             "task=qa", f"modes=[{args.mode}]", f"seeds=[{args.seed}]"]
    return None, load_config(args.config, flags + args.set)[0]


def run(args) -> dict:
    info, config = settings(args)
    task = get_task("qa")
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    mode = info["mode"] if args.eval_only else config.modes[0]
    splits = {"test": read_squad(Path(args.eval_file))}
    if not args.eval_only:
        splits["train"], splits["dev"] = hold_out(read_squad(Path(args.train_file)), config.dev_fraction)
    data = QaDataset(config.dataset, splits, dev_held_out=True)
    if not args.eval_only:  # a saved model is always evaluated on the whole file
        data = data.head(config.max_examples)
    base, tokenizer = load_encoder(config.model, config.trust_remote_code)
    check_against_model(config, base, tokenizer)
    features = {s: task.features(data, s, tokenizer, config) for s in data.splits}
    pad_id = tokenizer.pad_token_id or 0
    datasets = {s: FeatureDataset(f, pad_id) for s, f in features.items()}
    lower_sha = None
    if mode in CACHED_MODES:
        cache = runner.cache_of(config, features, base, tokenizer, args.cache_root, device)
        lower_sha = cache.fingerprint["lower_weights_sha256"]
        datasets = {s: FeatureDataset(f, pad_id, cache.split(s)) for s, f in features.items()}

    out = Path(args.output_dir)
    report = {"mode": mode, "config": dataclasses.asdict(config), "device": device_name(device), "git_sha": git_sha(),
              "examples": {s: len(split.examples) for s, split in data.splits.items()},
              "features": {s: len(f) for s, f in features.items()}}
    if args.eval_only:
        if mode in CACHED_MODES and info["lower_weights_sha256"] != lower_sha:
            raise UserError(f"{args.load} was trained on the cache of another lower part "
                            f"({info['lower_weights_sha256']}); this encoder's is {lower_sha}")
        model = saved.load(args.load, info, config, base, task, data).to(device)
        report["loaded_from"] = str(args.load)
    else:
        model, history = runner.train_model(mode, args.seed, config, task, data, base, datasets, features, device)
        report["history"] = dataclasses.asdict(history)
        if args.save:
            report["saved_to"] = str(saved.save(out / "model", model, mode, config, task.describe(data), lower_sha))
    evaluation = runner.evaluate_split(model, "test", config, datasets, device)
    predictions = task.predict(data, "test", features["test"], evaluation.outputs)
    report["test"] = {**task.score(data, "test", features["test"], evaluation.outputs), "loss": evaluation.loss}
    report["inference_seconds"] = evaluation.seconds
    write_json(out / "predictions.json", predictions)
    write_json(out / "metrics.json", report)
    logging.getLogger("run_squad").info("exact match %.2f, F1 %.2f on %s", 100 * report["test"]["exact_match"],
                                        100 * report["test"]["f1"], args.eval_file)
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hostmem.return_freed_memory()
    return exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
