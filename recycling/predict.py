"""Predict with a saved task model on a new data file: ``python -m recycling.predict --help``.

The practitioner's path: one corpus cached once, many task models served from it. ::

    python TextClassificationScripts/run_experiment.py EXP.yaml --data-dir DATA --save-models models
    python -m recycling.predict models/text_classification/chemprot/EXP/semi_frozen-seed0 new.jsonl --output pred.jsonl

The file is read by the model's task (JSON lines for text classification, CoNLL for NER, SQuAD
JSON for QA; labels optional, scored when every example has one), its cache is built with the
model's lower part or reused, and the predictions are written in the task's format. A model whose
lower part differs from this encoder's, or from the cache's, is refused: its upper layers were
trained on other activations.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

from cache_builder import task_cache
from recycling import cross_model, encoders, hostmem, saved
from recycling.batches import FeatureDataset, make_loader
from recycling.config import CACHED_MODES, SOURCE_MODES, check_against_model, check_device
from recycling.encoders import load_encoder
from recycling.errors import UserError, exit_code
from recycling.tasks import get_task
from recycling.trainer import evaluate

logger = logging.getLogger("recycling.predict")
SPLIT = "predict"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m recycling.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="folder of a saved model (--save-models, or run_squad.py --save)")
    p.add_argument("data_file", help="JSON lines (text classification), CoNLL (NER) or SQuAD JSON (QA)")
    p.add_argument("--output", required=True, help="where to write the predictions")
    p.add_argument("--cache-root", default=os.environ.get("ER_CACHE_DIR", "caches"))
    p.add_argument("--cache-dir", help="read (or build) the file's cache exactly here")
    p.add_argument("--device", help="default: the model's config, else cuda if available, else cpu")
    return p.parse_args(argv)


def predict(args: argparse.Namespace) -> dict:
    """Write the predictions of ``args.model`` on ``args.data_file``; return the scores if it is labelled."""
    info, config = saved.read_info(args.model)
    if args.device:
        check_device(args.device, "--device")
        config.device = args.device
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    task = get_task(config.task)
    path = Path(args.data_file)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    output = Path(args.output)
    if output.resolve() == path.resolve() or output.resolve().is_relative_to(Path(args.model).resolve()):
        raise UserError(f"--output {output} would overwrite the data file or the saved model; choose another path")
    data = task.load_file(path, config, info["data"])
    base, tokenizer = load_encoder(config.model, config.trust_remote_code)
    check_against_model(config, base, tokenizer)
    features = {SPLIT: task.features(data, SPLIT, tokenizer, config)}
    pad_id = tokenizer.pad_token_id or 0
    dataset = FeatureDataset(features[SPLIT], pad_id)
    if info["mode"] in CACHED_MODES:
        # Before any cache is built: the encoder found under this name today must be the one trained on.
        lower_sha = encoders.fingerprint_weights(encoders.lower_part(base, config.cut_layer))
        if lower_sha != info["lower_weights_sha256"]:
            raise UserError(f"{args.model} was trained on the activations of another lower part "
                            f"(sha256 {info['lower_weights_sha256'][:12]}) than {config.model} layers "
                            f"0..{config.cut_layer - 1} have here ({lower_sha[:12]}); refusing to predict")
        encoders.check_split(base, config.cut_layer)
        # A compressed cache is encoded with the model's own codec, not one fitted on this file.
        cache = task_cache(features, task=config.task, dataset=path.stem, model_name=config.model, model=base,
                           cut_layer=config.cut_layer, pad_id=pad_id, dtype=config.cache_dtype,
                           batch_size=config.cache_batch_size, cache_root=args.cache_root,
                           cache_dir=args.cache_dir, device=device, codec=config.cache_codec,
                           codec_dim=config.cache_codec_dim, codec_given=saved.load_codec(args.model, info))
        # task_cache refuses a cache (e.g. at --cache-dir) of another lower part than this encoder's,
        # which is the model's by the check above.
        if config.verify_cache:
            cache.verify()
        dataset = FeatureDataset(features[SPLIT], pad_id, cache.split(SPLIT))
    if info["mode"] in SOURCE_MODES:
        aligned, _ = cross_model.source_splits(config, task, data, features, tokenizer,
                                                    cache_root=args.cache_root, device=device, dataset=path.stem,
                                                    cache_dir=args.cache_dir, verify=config.verify_cache,
                                                    codec_given=saved.load_codec(args.model, info),
                                                    trained_on=info["source_weights_sha256"])
        dataset = FeatureDataset(features[SPLIT], pad_id, source=aligned[SPLIT])
    model = saved.load(args.model, info, config, base, task, data)
    model.codec = dataset.codec
    model.to(device)
    loader = make_loader(dataset, config.eval_batch_size, False, group_by_length=config.group_by_length,
                         pin_memory=torch.device(device).type == "cuda")
    evaluation = evaluate(model, loader, device, config.precision, config.prefetch_batches)
    predictions = task.predict(data, SPLIT, features[SPLIT], evaluation.outputs)
    task.write_predictions(data, SPLIT, predictions, output)
    logger.info("%d predictions of %s (%s) written to %s in %.1fs", len(predictions), args.model, info["mode"],
                args.output, evaluation.seconds)
    scores = {}
    if not task.labelled(data, SPLIT):
        logger.warning("%s: not every example has a label, so the predictions are not scored", path)
    else:
        scores = task.score(data, SPLIT, features[SPLIT], evaluation.outputs)
        logger.info("scores against the file's labels: %s",
                    ", ".join(f"{k} {100 * v:.2f}" for k, v in scores.items()))
    return scores


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hostmem.return_freed_memory()
    return exit_code(lambda: predict(args))


if __name__ == "__main__":
    sys.exit(main())
