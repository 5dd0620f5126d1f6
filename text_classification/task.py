"""Text classification as a task of the shared runner: one label per text."""

from __future__ import annotations

import logging
from pathlib import Path

from recycling.heads import SequenceClassificationHead
from recycling.metrics import classification_scores
from recycling.tasks import Features, Task
from text_classification.data import Dataset, load_dataset

logger = logging.getLogger(__name__)


def default_pooling(encoder) -> str:
    """First token, except for T5, whose encoder has no summary token of that kind."""
    return "mean" if encoder.config.model_type == "t5" else "cls"


def tokenize(tokenizer, texts: list[str], max_length: int) -> tuple[list[list[int]], int]:
    """Token ids of each text, truncated to ``max_length``; also returns how many were truncated."""
    ids = tokenizer(texts, truncation=False, verbose=False)["input_ids"]
    too_long = [i for i, row in enumerate(ids) if len(row) > max_length]
    if too_long:
        cut = tokenizer([texts[i] for i in too_long], truncation=True, max_length=max_length)["input_ids"]
        for i, row in zip(too_long, cut):
            ids[i] = row
    return ids, len(too_long)


class TextClassificationTask(Task):
    name = "text_classification"

    def load(self, data_dir: str | Path, config) -> Dataset:
        data = load_dataset(data_dir, config.dataset, config.text_field, config.label_field)
        return data.head(config.max_examples)

    def features(self, data: Dataset, split: str, tokenizer, config) -> Features:
        ids, truncated = tokenize(tokenizer, data.splits[split].texts, config.max_length)
        if truncated:
            logger.warning("%s: %d texts are longer than max_length=%d tokens and were truncated",
                           split, truncated, config.max_length)
        return Features(ids, {"labels": data.label_ids(split)})

    def head(self, data: Dataset, encoder, config) -> SequenceClassificationHead:
        return SequenceClassificationHead(encoder.config.hidden_size, len(data.label_names), config.head_dropout,
                                          config.pooling or default_pooling(encoder))

    def predict(self, data: Dataset, split: str, features: Features, outputs: list) -> list[str]:
        return [data.label_names[int(logits.argmax())] for logits in outputs]

    def score(self, data: Dataset, split: str, features: Features, outputs: list) -> dict[str, float]:
        pred = [int(logits.argmax()) for logits in outputs]
        return classification_scores(features.targets["labels"], pred)

    def describe(self, data: Dataset) -> dict:
        return {"label_names": data.label_names,
                "examples": {name: len(s.texts) for name, s in data.splits.items()}}
