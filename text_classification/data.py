"""Read a text-classification dataset: ``<data_dir>/text_classification/<name>/{train,dev,test}.txt``.

Each line is a JSON object with a text field and a label field (``text`` and ``label`` by
default; other keys such as ``metadata`` are ignored). Every problem is reported as a
``UserError`` naming the file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from recycling.config import split_limit
from recycling.errors import UserError
from recycling.files import dataset_dir

SPLITS = ("train", "dev", "test")


@dataclass
class Split:
    path: Path
    texts: list[str]
    labels: list[str]


@dataclass
class Dataset:
    name: str
    splits: dict[str, Split]
    label_names: list[str]  # index = class id; sorted, taken from train

    def head(self, n: int | dict[str, int] | None) -> "Dataset":
        """The first ``n`` examples of each split, or ``n[split]`` of the splits named (labels still
        named from the whole train file)."""
        if n is None:
            return self

        def cut(k, s):
            m = split_limit(n, k)
            return Split(s.path, s.texts[:m], s.labels[:m])
        return Dataset(self.name, {k: cut(k, s) for k, s in self.splits.items()}, self.label_names)

    def label_ids(self, split: str) -> list[int]:
        index = {name: i for i, name in enumerate(self.label_names)}
        return [index[label] for label in self.splits[split].labels]


def read_split(path: Path, text_field: str = "text", label_field: str = "label") -> Split:
    if not path.is_file():
        raise UserError(f"missing data file: {path}")
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{where}: malformed JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{where}: expected a JSON object")
            for field in (text_field, label_field):
                if field not in row:
                    raise UserError(f"{where}: missing field '{field}'")
            text = row[text_field]
            if not isinstance(text, str) or not text.strip():
                raise UserError(f"{where}: empty text in field '{text_field}'")
            texts.append(text)
            labels.append(str(row[label_field]))
    if not texts:
        raise UserError(f"{path}: no examples")
    return Split(path, texts, labels)


def load_dataset(data_dir: str | Path, name: str, text_field: str = "text",
                 label_field: str = "label") -> Dataset:
    folder = dataset_dir(data_dir, "text_classification", name)
    splits = {s: read_split(folder / f"{s}.txt", text_field, label_field) for s in SPLITS}
    label_names = sorted(set(splits["train"].labels))
    known = set(label_names)
    for s in ("dev", "test"):
        unseen = sorted(set(splits[s].labels) - known)
        if unseen:
            raise UserError(f"{splits[s].path}: label(s) not in train: {', '.join(unseen)}")
    return Dataset(name, splits, label_names)
