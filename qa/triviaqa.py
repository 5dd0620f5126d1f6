"""Turn TriviaQA (reading-comprehension config ``rc``) into SQuAD v1.1 files the QA reader accepts.

TriviaQA gives a question, its evidence documents and a list of answer aliases, but no answer span.
The QA heads here learn spans, so each question gets one context and one span, following the rule
the paper's setup used (``shared/reference/README.md``):

* context: the question's web search contexts joined with ``SEPARATOR`` (a blank line, so the
  documents stay visibly apart and no word of one document runs into the next); a question without
  any search context falls back to its Wikipedia contexts, joined the same way;
* answer: the earliest occurrence in that context of any candidate (the answer aliases plus
  ``answer.value``), searched case-sensitively first and only then case-insensitively, so an exact
  spelling wins over a recased one further left; the answer text is the context's own substring,
  which keeps ``context[answer_start:][:len(text)] == text`` true for the reader's checks;
* a question with no occurrence has no span to learn from and is dropped (and counted).

The official test split has no answers, so the train split is divided 85/15 into train/dev and the
validation split plays test. One SQuAD "article" per question keeps the dev split by article from
ever sharing a context between splits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from recycling.errors import UserError

logger = logging.getLogger(__name__)

SEPARATOR = "\n\n"  # between the documents of one context
DEV_FRACTION = 0.15
SOURCE_SPLITS = ("train", "validation")  # TriviaQA's splits with answers; validation becomes test


def _texts(group: Any, key: str) -> list[str]:
    """The non-blank strings of ``record[group][key]``; missing groups count as empty, since
    TriviaQA leaves out search results (or entity pages) for many questions."""
    values = (group or {}).get(key) or []
    return [v for v in values if isinstance(v, str) and v.strip()]


def build_context(record: Mapping[str, Any]) -> str:
    """The search contexts joined, else the Wikipedia contexts joined ("" when there are neither)."""
    documents = _texts(record.get("search_results"), "search_context")
    if not documents:
        documents = _texts(record.get("entity_pages"), "wiki_context")
    return SEPARATOR.join(documents)


def answer_candidates(answer: Mapping[str, Any]) -> list[str]:
    """Aliases plus the canonical value, without blanks or repeats (order kept for stable ties)."""
    values = [*(answer.get("aliases") or []), answer.get("value")]
    return list(dict.fromkeys(v for v in values if isinstance(v, str) and v.strip()))


def find_answer(context: str, candidates: Iterable[str]) -> tuple[str, int] | None:
    """(text, start) of the earliest occurrence of any candidate, or None.

    Among candidates starting at the same place the longest wins, so "New York City" is preferred
    to "New York". Case-insensitive search runs only when no exact spelling occurs anywhere.
    """
    candidates = list(candidates)
    for flags in (0, re.IGNORECASE):
        best: tuple[int, int] | None = None  # (start, -length)
        for candidate in candidates:
            found = re.search(re.escape(candidate), context, flags)
            if found and (best is None or (found.start(), -len(found.group())) < best):
                best = (found.start(), -len(found.group()))
        if best is not None:
            start, end = best[0], best[0] - best[1]
            return context[start:end], start
    return None


def convert_record(record: Mapping[str, Any], max_context_chars: int | None = None) -> dict | None:
    """One SQuAD v1.1 article holding the question, its context and its answer, or None when no
    candidate occurs in the context (within the first ``max_context_chars`` characters, if given:
    an answer past the cap would be cut off with the text the model sees)."""
    missing = [key for key in ("question_id", "question") if key not in record]
    if missing:
        raise UserError(f"TriviaQA record lacks {', '.join(missing)}: {str(dict(record))[:80]}")
    question_id = str(record["question_id"])
    context = build_context(record)
    if max_context_chars is not None:
        context = context[:max_context_chars]
    found = find_answer(context, answer_candidates(record.get("answer") or {}))
    if found is None:
        return None
    text, start = found
    qa = {"id": question_id, "question": record["question"],
          "answers": [{"text": text, "answer_start": start}]}
    return {"title": question_id, "paragraphs": [{"context": context, "qas": [qa]}]}


def convert_split(records: Iterable[Mapping[str, Any]],
                  max_context_chars: int | None = None) -> tuple[list[dict], int]:
    """The converted articles and how many records were dropped for want of an answer span."""
    kept: list[dict] = []
    dropped = 0
    for record in records:
        article = convert_record(record, max_context_chars)
        if article is None:
            dropped += 1
        else:
            kept.append(article)
    return kept, dropped


def _split_key(seed: int, title: str) -> bytes:
    return hashlib.sha256(f"{seed}:{title}".encode("utf-8")).digest()


def split_train(items: list[dict], fraction: float = DEV_FRACTION, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, dev): ``round(fraction * len(items))`` articles go to dev.

    Articles are ranked by a SHA-256 of ``seed`` and their title (the question id), and the first
    ones go to dev. That depends neither on the order the records arrive in nor on Python's random
    module, so the same data and seed give the same split on any machine. Both parts keep the input
    order.
    """
    if not 0 < fraction < 1:
        raise UserError(f"dev fraction must be in (0, 1), got {fraction}")
    ranked = sorted(range(len(items)), key=lambda i: _split_key(seed, items[i]["title"]))
    dev_indices = set(ranked[:round(fraction * len(items))])
    train = [item for i, item in enumerate(items) if i not in dev_indices]
    dev = [item for i, item in enumerate(items) if i in dev_indices]
    return train, dev


def write_squad(path: str | Path, items: list[dict]) -> Path:
    """Write a SQuAD v1.1 file atomically: a temporary file in the same folder, then os.replace,
    so an interrupted run never leaves a truncated file for a later experiment to read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            json.dump({"version": "1.1", "data": items}, f, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def prepare(records_by_split: Mapping[str, Iterable[Mapping[str, Any]]], out_dir: str | Path,
            max_context_chars: int | None = None, seed: int = 0) -> dict[str, int]:
    """Write ``train.json``, ``dev.json`` and ``test.json`` into ``out_dir`` from TriviaQA's
    ``train`` and ``validation`` records; return the question counts and the dropped ones."""
    missing = [s for s in SOURCE_SPLITS if s not in records_by_split]
    if missing:
        raise UserError(f"TriviaQA records lack split(s) {', '.join(missing)}")
    if max_context_chars is not None and max_context_chars < 1:
        raise UserError(f"max_context_chars must be at least 1, got {max_context_chars}")
    out_dir = Path(out_dir)
    counts: dict[str, int] = {}
    converted = {}
    for split in SOURCE_SPLITS:
        kept, dropped = convert_split(records_by_split[split], max_context_chars)
        if not kept:
            raise UserError(f"TriviaQA {split}: no question has an answer alias in its context")
        logger.info("TriviaQA %s: %d questions kept, %d dropped (no answer alias in the context)",
                    split, len(kept), dropped)
        converted[split] = kept
        counts[f"dropped_{split}"] = dropped
    train, dev = split_train(converted["train"], seed=seed)
    for name, items in (("train", train), ("dev", dev), ("test", converted["validation"])):
        write_squad(out_dir / f"{name}.json", items)
        counts[name] = len(items)
    logger.info("wrote %s: train %d, dev %d, test %d questions",
                out_dir, counts["train"], counts["dev"], counts["test"])
    return counts
