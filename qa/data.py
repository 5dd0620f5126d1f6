"""Read an extractive QA dataset in SQuAD JSON format: ``<data_dir>/qa/<name>/<file>.json``.

Both SQuAD v1.1 and v2.0 files are accepted. The models here only predict spans, so v2.0's
unanswerable questions are skipped (and counted in one warning) rather than rejected. Every
answer is checked against its ``answer_start``: training targets are built from those offsets, so
an answer that is not where the file says would silently teach the model the wrong span. Every
problem is reported as a ``UserError`` naming the file and, where one is concerned, the question id.
A file to predict on may leave the answers out (``require_answers=False``).

SQuAD's test set is not public, so a dataset may have no dev file; dev is then a held-out slice of
train's *articles* (not questions), since questions on one paragraph share their context and would
leak across a question-level split.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recycling.config import split_limit
from recycling.errors import UserError
from recycling.files import check_plain_name, dataset_dir, read_bytes

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")


@dataclass
class QaExample:
    id: str
    question: str
    context: str
    answers: list[str]  # reference answer texts, all of them (dev/test have up to 3 in SQuAD v1.1); [] unlabelled
    answer_starts: list[int]  # character offset of each answer in context, same order
    article: int  # index of the article (entry of "data") in its file: held-out splits are by article


@dataclass
class QaSplit:
    path: Path
    examples: list[QaExample]

    @property
    def labelled(self) -> bool:
        return all(ex.answers for ex in self.examples)


@dataclass
class QaDataset:
    name: str
    splits: dict[str, QaSplit]  # "train", "dev", "test"
    dev_held_out: bool  # True when dev is a held-out slice of train's articles

    def head(self, n: int | dict[str, int] | None) -> "QaDataset":
        """The first ``n`` (or ``n[split]``) examples of each split, for quick runs."""
        if n is None:
            return self
        splits = {k: QaSplit(s.path, s.examples[:split_limit(n, k)]) for k, s in self.splits.items()}
        return QaDataset(self.name, splits, self.dev_held_out)


@dataclass
class _RawQuestion:
    """A question whose enclosing structure has been checked, with what it inherits from above."""
    qa: dict[str, Any]
    context: Any
    article: int


def _load_json(path: Path) -> Any:
    """The parsed file; decoding and syntax errors carry a position so the user can find them."""
    data = read_bytes(path)
    try:
        # utf-8-sig drops a leading BOM, which json.loads would otherwise refuse.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 (byte {data[err.start]:#04x} "
                        f"at offset {err.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}:{err.colno}: malformed JSON ({err.msg})") from None
    except RecursionError:
        raise UserError(f"{path}: malformed JSON (nested too deeply)") from None
    except ValueError as err:  # e.g. an integer of 5,000 digits; json gives no position for these
        raise UserError(f"{path}: malformed JSON ({str(err).split(':')[0]})") from None


def _lone_surrogate(text: str) -> bool:
    """JSON's \\ud800-style escapes can produce half a character, which no tokenizer or file accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _article_name(index: int, article: Any) -> str:
    title = article.get("title") if isinstance(article, dict) else None
    return f"article {index} ({title!r})" if isinstance(title, str) else f"article {index}"


def _raw_questions(path: Path, root: Any) -> list[_RawQuestion]:
    """Check the data/paragraphs/qas nesting and flatten it, keeping each question's context and article."""
    if not isinstance(root, dict) or not isinstance(root.get("data"), list):
        raise UserError(f"{path}: expected a JSON object with a \"data\" list (SQuAD format)")
    questions = []
    for a, article in enumerate(root["data"]):
        where = f"{path}: {_article_name(a, article)}"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise UserError(f"{where}: missing \"paragraphs\" list")
        for p, paragraph in enumerate(article["paragraphs"]):
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                raise UserError(f"{where}: paragraph {p}: missing \"qas\" list")
            for q, qa in enumerate(paragraph["qas"]):
                if not isinstance(qa, dict) or not isinstance(qa.get("id"), str) or not qa["id"]:
                    raise UserError(f"{where}: paragraph {p}: question {q}: missing \"id\" string")
                questions.append(_RawQuestion(qa, paragraph.get("context"), a))
    return questions


def _answers(where: str, context: str, answers: list[Any]) -> tuple[list[str], list[int]]:
    """Texts and offsets of a question's answers, each checked to sit at its offset in the context."""
    texts, starts = [], []
    for answer in answers:
        if not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
            raise UserError(f"{where}: answer without a \"text\" string")
        text, start = answer["text"], answer.get("answer_start")
        if not text.strip():
            raise UserError(f"{where}: empty answer text")
        if _lone_surrogate(text):
            raise UserError(f"{where}: answer text is not valid Unicode (a lone surrogate escape)")
        # bool is an int subclass; true/false in the file is a mistake, not an offset.
        if not isinstance(start, int) or isinstance(start, bool):
            raise UserError(f"{where}: answer {text!r}: answer_start is not an integer (got {_short(start)})")
        if start < 0 or context[start:start + len(text)] != text:
            raise UserError(f"{where}: answer {text!r} is not at answer_start {start}")
        texts.append(text)
        starts.append(start)
    return texts, starts


def _short(value: Any) -> str:
    """A value for a message: its repr, cut so a whole article pasted into a field stays one short line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_squad(path: Path, require_answers: bool = True) -> QaSplit:
    """Read one SQuAD v1.1/v2.0 file into its answerable questions, in file order.

    ``require_answers=False`` (a file to predict on): every question is kept, and one with no
    ``answers`` key, an empty list or ``is_impossible`` gets no answers (``answers == []``); answers
    that are there are still checked. The split is labelled when every question has one.
    """
    path = Path(path)
    root = _load_json(path)
    questions = _raw_questions(path, root)
    # A v2.0 file marks every question with is_impossible; without those marks a question with no
    # answers is a broken v1.1 file, not an unanswerable question.
    version = root.get("version")
    is_v2 = (isinstance(version, str) and version.lstrip("v").startswith("2")) or any(
        "is_impossible" in r.qa for r in questions)
    examples: list[QaExample] = []
    seen: set[str] = set()
    skipped = 0
    for raw in questions:
        qa = raw.qa
        qid = qa["id"]
        where = f"{path}: question {qid!r}"
        if qid in seen:
            raise UserError(f"{where}: duplicate question id")
        seen.add(qid)
        if _lone_surrogate(qid):
            raise UserError(f"{where}: id is not valid Unicode (a lone surrogate escape)")
        if not isinstance(raw.context, str) or not raw.context.strip():
            raise UserError(f"{where}: empty or missing context")
        question = qa.get("question")
        if not isinstance(question, str) or not question.strip():
            raise UserError(f"{where}: empty or missing question text")
        for text, what in ((raw.context, "context"), (question, "question text")):
            if _lone_surrogate(text):
                raise UserError(f"{where}: {what} is not valid Unicode (a lone surrogate escape)")
        impossible = qa.get("is_impossible", False)
        if not isinstance(impossible, bool):
            raise UserError(f"{where}: is_impossible must be true or false (got {_short(impossible)})")
        if not require_answers and (impossible or qa.get("answers", []) == []):
            examples.append(QaExample(qid, question, raw.context, [], [], raw.article))
            continue
        answers = qa.get("answers")
        if not isinstance(answers, list):
            raise UserError(f"{where}: missing \"answers\" list")
        if impossible or (is_v2 and not answers):
            skipped += 1
            continue
        if not answers:
            raise UserError(f"{where}: no answers (only SQuAD 2.0 files, with is_impossible, "
                            f"may have unanswerable questions)")
        texts, starts = _answers(where, raw.context, answers)
        examples.append(QaExample(qid, question, raw.context, texts, starts, raw.article))
    if skipped:
        logger.warning("%s: skipped %d unanswerable questions (SQuAD 2.0)", path, skipped)
    if not examples:
        raise UserError(f"{path}: no answerable questions" if skipped else f"{path}: no questions")
    return QaSplit(path, examples)


def hold_out(split: QaSplit, fraction: float, seed: int = 0) -> tuple[QaSplit, QaSplit]:
    """Split off whole articles as a dev set: ``(train, dev)``, both keeping the file's example order.

    ``round(fraction * n_articles)`` articles, chosen at random with ``seed``, go to dev, clamped so
    each side gets at least one. Both splits keep ``split.path``: they come from the same file.
    """
    if not 0 < fraction < 1:
        raise UserError(f"{split.path}: dev fraction must be between 0 and 1 (got {fraction})")
    articles = sorted({ex.article for ex in split.examples})
    if len(articles) < 2:
        raise UserError(f"{split.path}: cannot hold out a dev set: needs at least 2 articles, "
                        f"found {len(articles)}")
    n_dev = min(max(round(fraction * len(articles)), 1), len(articles) - 1)
    dev_articles = set(random.Random(seed).sample(articles, n_dev))
    train = [ex for ex in split.examples if ex.article not in dev_articles]
    dev = [ex for ex in split.examples if ex.article in dev_articles]
    return QaSplit(split.path, train), QaSplit(split.path, dev)


def load_dataset(data_dir: str | Path, name: str, train_file: str, dev_file: str | None, test_file: str,
                 dev_fraction: float) -> QaDataset:
    """Read train and test, and dev from ``dev_file`` or, without one, held out from train's articles."""
    for value, what in ((train_file, "train_file"), (dev_file, "dev_file"), (test_file, "test_file")):
        if value is not None:
            check_plain_name(value, what)
    folder = dataset_dir(data_dir, "qa", name)
    train = read_squad(folder / train_file)
    if dev_file is None:
        train, dev = hold_out(train, dev_fraction)
        logger.info("%s: held out %d of its questions as dev (fraction %s of articles)",
                    train.path, len(dev.examples), dev_fraction)
    else:
        dev = read_squad(folder / dev_file)
    test = read_squad(folder / test_file)
    return QaDataset(name, {"train": train, "dev": dev, "test": test}, dev_held_out=dev_file is None)
