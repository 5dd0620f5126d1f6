"""The task interface: what a task (text classification, NER, QA, ...) supplies to the shared runner.

A task reads its data, turns examples into *features* (the token ids fed to the encoder, one row
per text or per window, with their targets), supplies the head that reads the encoder's final
hidden states, and turns the head's raw outputs back into predictions and scores. Everything
else (cache, modes, trainer, results) is the runner's and is the same for every task.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from recycling.errors import UserError

# name -> "module:class"; imported only when used, so configs can be checked without torch models.
REGISTRY = {
    "text_classification": "text_classification.task:TextClassificationTask",
    "ner": "ner.task:NerTask",
    "qa": "qa.task:QaTask",
}
# The scores each task reports; the config's `metric` must be one of them (the first is the default).
METRICS = {
    "text_classification": ("micro_f1", "macro_f1"),
    "ner": ("entity_f1", "entity_precision", "entity_recall", "token_micro_f1", "token_macro_f1"),
    "qa": ("f1", "exact_match"),
}


@dataclass
class Features:
    """Model inputs of one split, one row per feature (a text, or a window of a long text).

    ``input_ids`` (and ``token_type_ids`` where the task uses segments) are exactly what the lower
    layers see; their hash is the cache's fingerprint. ``targets`` maps each of the head's target
    keys to one value per feature: an int, or a list with one entry per token (-100 = no target).
    ``meta`` holds what only decoding needs (word ids, example ids, ...); it never enters a batch.
    """

    input_ids: list[list[int]]
    targets: dict[str, list]
    token_type_ids: list[list[int]] | None = None
    meta: Any = None

    def __len__(self) -> int:
        return len(self.input_ids)


class Task:
    """Base class of a task; subclasses implement every method below."""

    name: str

    def load(self, data_dir: str | Path, config) -> Any:
        """Read train, dev (model selection) and test of ``config.dataset`` (first ``config.max_examples``
        examples of each).

        Every problem is a ``UserError`` naming the file and line.
        """
        raise NotImplementedError

    def features(self, data, split: str, tokenizer, config) -> Features:
        raise NotImplementedError

    def head(self, data, hidden_size: int, config) -> nn.Module:
        """A fresh head: ``forward(hidden, attention_mask)``, ``loss(outputs, batch)`` and
        ``unbatch(outputs, batch)`` (see ``recycling.heads``)."""
        raise NotImplementedError

    def predict(self, data, split: str, features: Features, outputs: list) -> Any:
        """Decode the head's raw outputs (one per feature, in feature order) into predictions per
        example: label names, tag sequences, or ``{question id: answer}``."""
        raise NotImplementedError

    def score(self, data, split: str, features: Features, outputs: list) -> dict[str, float]:
        """The task's metrics of the decoded predictions against the split's references."""
        raise NotImplementedError

    def describe(self, data) -> dict:
        """What the result file records about the data (label names, example counts)."""
        raise NotImplementedError

    def load_file(self, path: Path, config, description: dict) -> Any:
        """One data file to predict on, as this task's dataset object with the single split "predict".

        ``description`` is what ``describe(data)`` returned for the training data (it holds the label
        set / tag set); the new data uses exactly that label set. Labels in the file are optional: when
        every example has them they are read (so ``score`` works on the split; a label outside the
        saved set is a ``UserError`` naming file and line); otherwise the split is unlabelled,
        ``features`` gives placeholder targets that the loss may read but that mean nothing, and only
        ``predict`` is meaningful.
        """
        raise NotImplementedError

    def labelled(self, data, split: str) -> bool:
        """Whether every example of ``split`` has its label (tags, answers), so ``score`` means something."""
        raise NotImplementedError

    def write_predictions(self, data, split: str, predictions, path: Path) -> None:
        """Write ``predict(...)``'s output for ``split``: text classification as JSON lines, one object
        per input line with the text and the predicted label under the configured text/label field
        names; NER as CoNLL, one ``word<TAB>predicted tag`` line per word, sentences separated by blank
        lines; QA as the official ``{question id: answer}`` JSON. Written atomically
        (``recycling.files.write_text``)."""
        raise NotImplementedError

    @staticmethod
    def saved_labels(description: dict) -> list[str]:
        """The label (tag) names a saved model's ``describe`` output holds; a description without them
        comes from another task or a damaged ``model.json``."""
        names = description.get("label_names") if isinstance(description, dict) else None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise UserError("the saved model's data description has no list of label names")
        return names


def get_task(name: str) -> Task:
    if name not in REGISTRY:
        raise UserError(f"unknown task '{name}' (known: {', '.join(REGISTRY)})")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)()
