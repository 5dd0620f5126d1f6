"""Text classification as a task of the shared runner: one label per text."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from recycling.errors import UserError
from recycling.files import write_text
from recycling.heads import SequenceClassificationHead
from recycling.metrics import classification_scores
from recycling.tasks import Features, Task
from text_classification.data import Dataset, load_dataset, read_split

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

    def load_file(self, path: Path, config, description: dict) -> Dataset:
        label_names = self.saved_labels(description)
        split = read_split(Path(path), config.text_field, config.label_field, require_labels=False,
                           label_names=label_names)
        return Dataset(config.dataset, {"predict": split}, label_names, config.text_field, config.label_field)

    def labelled(self, data: Dataset, split: str) -> bool:
        return data.splits[split].labels is not None

    def features(self, data: Dataset, split: str, tokenizer, config) -> Features:
        ids, truncated = tokenize(tokenizer, data.splits[split].texts, config.max_length)
        if truncated:
            logger.warning("%s: %d texts are longer than max_length=%d tokens and were truncated",
                           split, truncated, config.max_length)
        # An unlabelled split still needs a valid class id per text for the head's loss; 0 means nothing.
        labels = data.label_ids(split) if self.labelled(data, split) else [0] * len(ids)
        return Features(ids, {"labels": labels})

    def head(self, data: Dataset, encoder, config) -> SequenceClassificationHead:
        return SequenceClassificationHead(encoder.config.hidden_size, len(data.label_names), config.head_dropout,
                                          config.pooling or default_pooling(encoder))

    def predict(self, data: Dataset, split: str, features: Features, outputs: list) -> list[str]:
        return [data.label_names[int(logits.argmax())] for logits in outputs]

    def score(self, data: Dataset, split: str, features: Features, outputs: list) -> dict[str, float]:
        if not self.labelled(data, split):
            raise UserError(f"{data.splits[split].path}: not every text has a label, so there is nothing to score")
        pred = [int(logits.argmax()) for logits in outputs]
        return classification_scores(features.targets["labels"], pred)

    def describe(self, data: Dataset) -> dict:
        return {"label_names": data.label_names,
                "examples": {name: len(s.texts) for name, s in data.splits.items()}}

    def write_predictions(self, data: Dataset, split: str, predictions: list[str], path: Path) -> None:
        """JSON lines in the input's own field names, so the file reads back as a labelled split."""
        texts = data.splits[split].texts
        if len(predictions) != len(texts):
            raise ValueError(f"{len(predictions)} predictions for {len(texts)} texts")
        rows = (json.dumps({data.text_field: text, data.label_field: label}, ensure_ascii=False)
                for text, label in zip(texts, predictions))
        write_text(Path(path), "".join(row + "\n" for row in rows))
