"""Build (or verify and reuse) the cache of one dataset: ``python -m cache_builder --help``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cache_builder.build import build_cache, default_cache_dir
from cache_builder.store import DTYPES
from recycling.encoders import load_encoder, tokenize_splits
from recycling.errors import UserError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cache_builder", description=__doc__)
    p.add_argument("--task", default="text_classification", choices=["text_classification"])
    p.add_argument("--dataset", required=True, help="folder name under <data-dir>/<task>/")
    p.add_argument("--data-dir", default=os.environ.get("ER_DATA_DIR"),
                   help="root of the datasets (default: $ER_DATA_DIR)")
    p.add_argument("--model", required=True, help="hub id, local folder or offline:<name>")
    p.add_argument("--cut-layer", type=int, required=True, help="layers below this one are cached")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--dtype", default="float16", choices=list(DTYPES))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cache-root", default=os.environ.get("ER_CACHE_DIR", "caches"))
    p.add_argument("--cache-dir", help="exact folder of this cache (default: derived under --cache-root)")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from text_classification.data import cache_inputs, load_dataset

    try:
        if not args.data_dir:
            raise UserError("no data directory: pass --data-dir or set ER_DATA_DIR")
        dataset = load_dataset(args.data_dir, args.dataset)
        model, tokenizer = load_encoder(args.model)
        ids = tokenize_splits(tokenizer, {n: s.texts for n, s in dataset.splits.items()}, args.max_length)
        cache_dir = args.cache_dir or default_cache_dir(
            args.cache_root, args.task, args.dataset, args.model, args.cut_layer, args.max_length, args.dtype)
        cache = build_cache(cache_dir, args.model, model, tokenizer, args.cut_layer,
                            cache_inputs(dataset, ids), max_length=args.max_length, dtype=args.dtype,
                            batch_size=args.batch_size, device=args.device, extra={"label_names": dataset.label_names})
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(cache.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
