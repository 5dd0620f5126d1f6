"""SQuAD v1.1 exact match and token F1, defined as the official evaluation defines them.

Answers are compared after normalization (case, punctuation, articles, whitespace), so that
"The Eiffel Tower." and "eiffel tower" count as the same answer; a prediction is scored against
each reference answer and keeps its best score. Scores are fractions in [0, 1], not percentages.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qa.data import QaExample

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, and collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _check_references(references: list[str]) -> None:
    # Every example the reader produces has an answer; an empty list is a caller bug, not a 0 score.
    if not references:
        raise ValueError("no reference answers to score against")


def exact_match(prediction: str, references: list[str]) -> float:
    """1.0 when the normalized prediction equals any normalized reference, else 0.0."""
    _check_references(references)
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(ref) for ref in references))


def _token_f1(predicted: list[str], reference: list[str]) -> float:
    """F1 of two token lists, shared tokens counted with multiplicity.

    When a list is empty (e.g. a reference that was only "the"), F1 is 1.0 if both are empty and
    0.0 otherwise. The official v1.1 script scores two empty lists 0 (no token in common); we
    follow the v2.0 script instead, so that an exact match never has an F1 below 1.
    """
    if not predicted or not reference:
        return float(predicted == reference)
    common = sum((Counter(predicted) & Counter(reference)).values())
    if common == 0:
        return 0.0
    precision = common / len(predicted)
    recall = common / len(reference)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, references: list[str]) -> float:
    """The best token-level F1 of the normalized prediction against any normalized reference."""
    _check_references(references)
    predicted = normalize_answer(prediction).split()
    return max(_token_f1(predicted, normalize_answer(ref).split()) for ref in references)


def squad_scores(predictions: dict[str, str], examples: list[QaExample]) -> dict[str, float]:
    """Mean exact match and F1 over ``examples``; an example without a prediction counts as ""."""
    if not examples:
        raise ValueError("no examples to score")
    em_total = f1_total = 0.0
    for ex in examples:
        prediction = predictions.get(ex.id, "")
        em_total += exact_match(prediction, ex.answers)
        f1_total += f1(prediction, ex.answers)
    return {"exact_match": em_total / len(examples), "f1": f1_total / len(examples)}
