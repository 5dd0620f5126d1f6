"""Read a text-classification dataset: ``<data_dir>/text_classification/<name>/{train,dev,test}.txt``.

Each line is a JSON object with a text field and a label field (``text`` and ``label`` by
default; other keys such as ``metadata`` are ignored). Every problem is reported as a
``UserError`` naming the file and line. A file to predict on may leave the label out
(``require_labels=False``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from recycling.config import split_limit
from recycling.errors import UserError
from recycling.files import dataset_dir, read_lines

SPLITS = ("train", "dev", "test")


@dataclass
class Split:
    path: Path
    texts: list[str]
    labels: list[str] | None  # None: the file does not label every text (a file to predict on)


@dataclass
class Dataset:
    name: str
    splits: dict[str, Split]
    label_names: list[str]  # index = class id; sorted, taken from train
    # The configured field names, so predictions are written back under the names the input used.
    text_field: str = "text"
    label_field: str = "label"

    def head(self, n: int | dict[str, int] | None) -> "Dataset":
        """The first ``n`` examples of each split, or ``n[split]`` of the splits named (labels still
        named from the whole train file)."""
        if n is None:
            return self

        def cut(k, s):
            m = split_limit(n, k)
            return Split(s.path, s.texts[:m], None if s.labels is None else s.labels[:m])
        return Dataset(self.name, {k: cut(k, s) for k, s in self.splits.items()}, self.label_names,
                       self.text_field, self.label_field)

    def label_ids(self, split: str) -> list[int]:
        index = {name: i for i, name in enumerate(self.label_names)}
        return [index[label] for label in self.splits[split].labels]


def has_lone_surrogate(text: str) -> bool:
    """JSON's \\ud800-style escapes can produce half a character, which no tokenizer or file accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def json_kind(value) -> str:
    """How a JSON value is spelled in the file, for messages about values of the wrong type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else repr(value).replace("inf", "Infinity")
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def label_text(value, what: str) -> str:
    """A label as the string it names: a string, or an integer in its decimal form (``3`` is ``"3"``).

    Anything else (null, true, 1.5, NaN, a list, an object) is far more likely a broken file than a
    class name, so it is refused rather than turned into a label such as ``"None"``. Raises
    ``ValueError`` with the message tail; the caller adds the file and line.
    """
    if isinstance(value, str):
        if has_lone_surrogate(value):
            raise ValueError(f"{what} is not valid Unicode (a lone surrogate escape)")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{what} must be a string or an integer, got {json_kind(value)}")


def read_split(path: Path, text_field: str = "text", label_field: str = "label", require_labels: bool = True,
               label_names: list[str] | None = None) -> Split:
    """Read one JSON-lines file.

    ``require_labels=False`` (a file to predict on): a line may leave the label out; unless every line
    has one, the split is unlabelled (``labels`` None). ``label_names``: the labels a trained model
    knows; when the split is labelled, a label outside them is an error naming its line.
    """
    path = Path(path)
    texts, labels, label_lines = [], [], []
    unlabelled = False
    for line_no, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{where}: malformed JSON ({err.msg})") from None
        except (ValueError, RecursionError) as err:  # e.g. an integer of 5,000 digits, or 10,000 nested [
            reason = "nested too deeply" if isinstance(err, RecursionError) else str(err).split(":")[0]
            raise UserError(f"{where}: malformed JSON ({reason})") from None
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object")
        required = (text_field, label_field) if require_labels else (text_field,)
        for field in required:
            if field not in row:
                raise UserError(f"{where}: missing field '{field}'")
        text = row[text_field]
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}: empty text in field '{text_field}'")
        if has_lone_surrogate(text):
            raise UserError(f"{where}: text in field '{text_field}' is not valid Unicode (a lone surrogate escape)")
        texts.append(text)
        if label_field not in row:
            unlabelled = True
            continue
        try:
            labels.append(label_text(row[label_field], label_field))
        except ValueError as err:
            raise UserError(f"{where}: {err}") from None
        label_lines.append(line_no)
    if not texts:
        raise UserError(f"{path}: no examples")
    if unlabelled:
        return Split(path, texts, None)
    if label_names is not None:
        known = set(label_names)
        for label, line_no in zip(labels, label_lines):
            if label not in known:
                raise UserError(f"{path}:{line_no}: label {label!r} is not one the model was trained on "
                                f"(it knows: {', '.join(label_names)})")
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
    return Dataset(name, splits, label_names, text_field, label_field)
