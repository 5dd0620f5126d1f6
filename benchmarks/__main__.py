"""Speed benchmark: every recycled setting against what it replaces, step and epoch level.

    python -m benchmarks --suite cpu --data-dir ../shared/datasets        # ~40 min on 2 cores
    python -m benchmarks --suite gpu --data-dir DATA                       # the paper's shapes, bf16
    python -m benchmarks --suite gpu --models roberta deberta              # a subset (name substrings)

Writes ``results/benchmarks/<device>/<model>.json`` (settings, environment, every timing) and
rebuilds ``results/benchmarks/summary.csv``, ``summary.md`` and ``ratio_vs_seq_len.png``.
Run it alone on the machine: anything else running makes the ratios meaningless.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks import report, speed
from benchmarks.suites import SUITES, Suite
from recycling import encoders, hostmem
from recycling.errors import UserError, exit_code
from recycling.files import write_json
from recycling.results import environment, portable_path

logger = logging.getLogger("benchmarks")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), default="cpu")
    p.add_argument("--models", nargs="*", default=None, help="only models whose name contains one of these")
    p.add_argument("--data-dir", default=os.environ.get("ER_DATA_DIR"),
                   help="datasets for the epoch level (default: $ER_DATA_DIR; without it, step level only)")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--skip-epochs", action="store_true", help="step level only")
    p.add_argument("--epochs-only", action="store_true",
                   help="measure the epoch level again, keeping the step level of the existing result file")
    p.add_argument("--codecs-only", action="store_true",
                   help="measure only the compressed caches' read + decode, keeping the rest of the existing "
                        "result file")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer folder for the epoch level of random-weight (config:) models, e.g. the "
                        "offline MiniLM's (BERT uncased WordPiece); without it they are measured by step only")
    return p.parse_args(argv)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def run(args: argparse.Namespace, suite: Suite | None = None) -> list[Path]:
    """Measure every model of ``suite`` (default: the one ``--suite`` names) and write its results."""
    suite = suite or SUITES[args.suite]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    specs = [m for m in suite.models if not args.models or any(s in m.name for s in args.models)]
    if not specs:
        raise UserError(f"no model of suite '{args.suite}' matches {args.models}")
    env = environment(device)
    out_dir = Path(args.results_dir) / "benchmarks"
    written = []
    for spec in specs:
        base, tokenizer = speed.load_model(spec)
        if tokenizer is None and args.tokenizer:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(encoders.resolve_model(args.tokenizer))
        base = base.to(device)
        layers = encoders.num_layers(base)
        cut = layers // 2  # the half cut the ideal ratios and the paper's headline use
        logger.info("%s: %d layers, cut at %d, %s on %s", spec.name, layers, cut, suite.precision, env["device"])
        path = out_dir / slug(env["device"]) / f"{slug(spec.name)}.json"
        kept = None
        if args.epochs_only or args.codecs_only:
            if not path.is_file():
                raise UserError(f"--{'codecs' if args.codecs_only else 'epochs'}-only: no earlier result at {path}")
            kept = json.loads(path.read_text())
        result = {
            "environment": env,
            "suite": {"name": args.suite, **dataclasses.asdict(suite), "models": None},
            "model": {"name": spec.name, "weights": spec.weights, "layers": layers, "cut_layer": cut,
                      # by name, never a path of this machine: the model's own, or --tokenizer's
                      "tokenizer": None if tokenizer is None else (
                          spec.name if spec.weights == "pretrained" else portable_path(args.tokenizer)),
                      "hidden_size": encoders.hidden_size(base),
                      "parameters": sum(p.numel() for p in base.parameters()), "grid": spec.grid},
            "step_level": kept["step_level"] if kept else speed.step_level(spec, base, cut, suite, device),
            # the step level's own environment when it was kept from an earlier invocation
            "step_level_environment": kept.get("step_level_environment", kept["environment"]) if kept else env,
            "epoch_level": None,
            "codec_level": None,
        }
        if args.codecs_only:  # everything else as measured before, with the environment it had
            result = {**kept, "codec_level": None, "codec_level_environment": env}
        if spec.epoch and tokenizer is not None and args.data_dir and not args.skip_epochs:
            with tempfile.TemporaryDirectory(prefix="er-bench-cache-") as cache_root:
                if not args.codecs_only:
                    result["epoch_level"] = speed.epoch_level(spec, base, tokenizer, cut, suite, device,
                                                              args.data_dir, cache_root)
                if suite.codecs:
                    result["codec_level"] = speed.codec_level(spec, base, tokenizer, cut, suite, device,
                                                              args.data_dir, cache_root)
        write_json(path, result)
        written.append(path)
        report.rebuild(out_dir)
        logger.info("wrote %s", path)
        del base
        speed.release_memory(device)
    return written


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    hostmem.return_freed_memory()  # as the training entries do: memory figures are what users get
    return exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
