"""Read a CoNLL-style NER dataset: ``<data_dir>/ner/<name>/{train,dev,test}.txt``.

One word per line, the word in the first column and its entity tag in the last; other columns
(POS, chunk) are ignored. Blank lines and ``-DOCSTART-`` lines end a sentence. Releases of this
format disagree on details (tabs or spaces, CRLF, a BOM, IOB1/IO instead of IOB2), so the reader
accepts all of them and normalizes tags to IOB2. Every problem is reported as a ``UserError``
naming the file and, where one is concerned, the line. A file to predict on may have the word
column only (``require_tags=False``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from recycling.config import split_limit
from recycling.errors import UserError
from recycling.files import dataset_dir, read_lines

SPLITS = ("train", "dev", "test")

DOCSTART = "-DOCSTART-"
# "O", a typed "B-T"/"I-T", or a bare "B"/"I" from untyped schemes.
_TAG = re.compile(r"O|[BI](-.+)?")
_ACCEPTED = "expected O, B-TYPE, I-TYPE, B or I"


@dataclass
class Sentence:
    words: list[str]
    tags: list[str] | None  # IOB2; None in an unlabelled split (a file to predict on without tags)
    line: int  # 1-based line of the first word; word i is on line + i


@dataclass
class NerSplit:
    path: Path
    sentences: list[Sentence]

    @property
    def labelled(self) -> bool:
        return all(s.tags is not None for s in self.sentences)


@dataclass
class NerDataset:
    name: str
    splits: dict[str, NerSplit]
    tag_names: list[str]  # IOB2 tags seen in train: "O" first, then sorted

    def head(self, n: int | dict[str, int] | None) -> "NerDataset":
        """The first ``n`` (or ``n[split]``) sentences of each split, for quick runs; tags stay those
        of the whole train file."""
        if n is None:
            return self
        splits = {k: NerSplit(s.path, s.sentences[:split_limit(n, k)]) for k, s in self.splits.items()}
        return NerDataset(self.name, splits, self.tag_names)


def _split_tag(tag: str) -> tuple[str, str]:
    """``("B", "T")`` for ``B-T``, ``("I", "")`` for a bare ``I``, ``("O", "")`` for ``O``."""
    if not _TAG.fullmatch(tag):
        raise ValueError(f"not an IOB tag: {tag!r} ({_ACCEPTED})")
    prefix, _, kind = tag.partition("-")
    return prefix, kind


def to_iob2(tags: list[str]) -> list[str]:
    """Rewrite IOB1/IO/IOB2 tags of one sentence as IOB2.

    In IOB1 and IO an ``I-T`` may open a mention; IOB2 requires ``B-T`` there, which is what
    entity-level scoring and a tagger's label set expect. An ``I-T`` opens a mention when it
    follows ``O``, the sentence start, or a tag of another type; nothing else changes.
    """
    out = []
    prev_prefix, prev_kind = "O", ""
    for tag in tags:
        prefix, kind = _split_tag(tag)
        if prefix == "I" and (prev_prefix == "O" or prev_kind != kind):
            tag = "B-" + kind if kind else "B"
        out.append(tag)
        prev_prefix, prev_kind = prefix, kind
    return out


def read_conll(path: Path, require_tags: bool = True, tag_names: list[str] | None = None) -> NerSplit:
    """Read one split; tags are checked, then normalized to IOB2 sentence by sentence.

    ``require_tags=False`` (a file to predict on): a line may hold the word alone; unless every word
    has a tag the split is unlabelled (every sentence's ``tags`` None), and tags that are there are
    still checked. ``tag_names``: the tags a trained model knows; when the split is labelled, a
    (normalized) tag outside them is an error naming its line.
    """
    path = Path(path)
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str | None] = []
    first_line = 0

    def end_sentence() -> None:
        if words:
            complete = all(t is not None for t in tags)
            sentences.append(Sentence(list(words), to_iob2(tags) if complete else None, first_line))
            words.clear()
            tags.clear()

    for line_no, line in enumerate(read_lines(path), start=1):
        columns = line.split()
        if not columns or columns[0].startswith(DOCSTART):
            end_sentence()
            continue
        where = f"{path}:{line_no}"
        if len(columns) < 2 and require_tags:
            raise UserError(f"{where}: expected at least 2 columns (word ... tag), got {line.strip()!r}")
        tag = columns[-1] if len(columns) >= 2 else None
        if tag is not None and not _TAG.fullmatch(tag):
            raise UserError(f"{where}: unknown tag '{tag}' ({_ACCEPTED})")
        if not words:
            first_line = line_no
        words.append(columns[0])
        tags.append(tag)
    end_sentence()
    if not sentences:
        raise UserError(f"{path}: no sentences")
    split = NerSplit(path, sentences)
    if not split.labelled:
        for sentence in sentences:
            sentence.tags = None  # half-tagged files are not scored: drop what tags there were
    elif tag_names is not None:
        check_tags(split, tag_names, "is not one the model was trained on (it knows")
    return split


def check_tags(split: NerSplit, tag_names: list[str], complaint: str) -> None:
    """Every tag of a labelled split must be one of ``tag_names``: a tagger cannot predict any other."""
    known = set(tag_names)
    for sent in split.sentences:
        for offset, tag in enumerate(sent.tags):
            if tag not in known:
                raise UserError(f"{split.path}:{sent.line + offset}: tag '{tag}' {complaint}: "
                                f"{', '.join(tag_names)})")


def _tag_order(tag: str) -> tuple[bool, str]:
    return tag != "O", tag


def load_dataset(data_dir: str | Path, name: str) -> NerDataset:
    """Read all three splits; dev/test may only use tags that train has (a tagger can't predict others)."""
    folder = dataset_dir(data_dir, "ner", name)
    splits = {s: read_conll(folder / f"{s}.txt") for s in SPLITS}
    tag_names = sorted({t for sent in splits["train"].sentences for t in sent.tags}, key=_tag_order)
    for s in ("dev", "test"):
        check_tags(splits[s], tag_names, "not in train (train has")
    return NerDataset(name, splits, tag_names)
