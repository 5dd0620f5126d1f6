"""Build (or verify and reuse) the cache of one dataset for any task: ``python -m cache_builder --help``.

Give an experiment file, and the cache is exactly the one its runs will read::

    python -m cache_builder HyperparameterSelection/ner/minilm_l6_bc5cdr.yaml --data-dir DATA

or name the inputs directly::

    python -m cache_builder --task ner --dataset bc5cdr --model offline:all-MiniLM-L6-v2 --cut-layer 3 --data-dir DATA

Several processes (GPUs, or nodes sharing the cache folder) split the batches between them::

    accelerate launch --num_processes 4 -m cache_builder EXP.yaml --data-dir DATA

Check a built cache, rereading every byte against the checksums in its manifest::

    python -m cache_builder verify caches/ner/bc5cdr/<folder>
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cache_builder.store import ARRAYS, DTYPES, ActivationCache, human_size
from recycling.errors import UserError, exit_code
from recycling.tasks import METRICS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cache_builder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="experiment YAML; the flags below are then ignored")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--task", default="text_classification", choices=list(METRICS))
    p.add_argument("--dataset", help="folder name under <data-dir>/<task>/")
    p.add_argument("--data-dir", default=os.environ.get("ER_DATA_DIR"),
                   help="root of the datasets (default: $ER_DATA_DIR)")
    p.add_argument("--model", help="hub id, local folder or offline:<name>")
    p.add_argument("--cut-layer", type=int, help="layers below this one are cached")
    p.add_argument("--max-length", type=int, default=512, help="tokens per feature (NER: per window)")
    p.add_argument("--window-stride", type=int, default=64, help="tokens shared by consecutive windows (NER)")
    p.add_argument("--dtype", default="float16", choices=list(DTYPES))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cache-root", default=os.environ.get("ER_CACHE_DIR", "caches"))
    p.add_argument("--cache-dir", help="exact folder of this cache (default: derived under --cache-root)")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    return p.parse_args(argv)


def config_of(args: argparse.Namespace):
    from recycling.config import ExperimentConfig, load_config

    if args.config:
        return load_config(args.config, args.set)[0]
    missing = [f"--{k.replace('_', '-')}" for k in ("dataset", "model", "cut_layer") if getattr(args, k) is None]
    if missing:
        raise UserError(f"give an experiment file or {', '.join(missing)}")
    config = ExperimentConfig(dataset=args.dataset, model=args.model, cut_layer=args.cut_layer, task=args.task,
                              metric=METRICS[args.task][0], max_length=args.max_length,
                              window_stride=args.window_stride, cache_dtype=args.dtype,
                              cache_batch_size=args.batch_size, cache_dir=args.cache_dir, device=args.device)
    config.validate()
    return config


def verify(argv: list[str]) -> int:
    """``python -m cache_builder verify PATH``: the cheap check, then every checksum; one line out."""
    p = argparse.ArgumentParser(prog="python -m cache_builder verify",
                                description="Check a cache's structure and every array file's SHA-256.")
    p.add_argument("path", help="the cache folder (the one holding manifest.json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def check():
        cache = ActivationCache(args.path)
        complete = cache.verify()
        splits = ", ".join(
            f"{name} ({r.get('features')} features, {r.get('tokens')} tokens, "
            f"{human_size(sum((cache.path / name / a).stat().st_size for a in ARRAYS))})"
            for name, r in cache.manifest["splits"].items())
        what = ("every array file matches its SHA-256" if complete
                else "structure only: no checksums recorded (rebuild to make it verifiable)")
        print(f"ok: {cache.path}: {splits}; {what}")

    return exit_code(check)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # A subcommand in front of the build's own arguments, which it leaves as they were.
    if argv[:1] == ["verify"]:
        return verify(argv[1:])
    args = parse_args(argv)
    from recycling import distributed, hostmem

    # Under accelerate launch the other processes log only warnings: the main one reports the build.
    level = logging.INFO if distributed.processes().main else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from recycling.config import check_against_model
    from recycling.encoders import load_encoder
    from recycling.runner import cache_of, load_features
    from recycling.tasks import get_task

    def build():
        hostmem.return_freed_memory()
        config = config_of(args)
        if not args.data_dir:
            raise UserError("no data directory: pass --data-dir or set ER_DATA_DIR")
        task = get_task(config.task)
        data = task.load(args.data_dir, config)
        model, tokenizer = load_encoder(config.model, config.trust_remote_code)
        check_against_model(config, model, tokenizer)
        features = load_features(task, data, tokenizer, config)
        cache = cache_of(config, features, model, tokenizer, args.cache_root, config.device)
        if distributed.processes().main:  # under accelerate launch, one line for the whole job
            print(cache.path)

    return exit_code(build)


if __name__ == "__main__":
    sys.exit(main())
