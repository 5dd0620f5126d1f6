"""NER metrics: entity-level P/R/F1 (seqeval, conlleval-compatible) and the token-level F1 the paper reports.

Entity scores are the standard way to compare taggers; token scores (counting ``O``) are kept so
results can be set beside the original paper's numbers.
"""

from __future__ import annotations

from seqeval.metrics import f1_score as entity_f1
from seqeval.metrics import precision_score as entity_precision
from seqeval.metrics import recall_score as entity_recall
from sklearn.metrics import f1_score

from ner.data import to_iob2


def _check_lengths(gold: list[list[str]], pred: list[list[str]]) -> None:
    """Mismatched lengths mean the caller lost or merged words: fail loudly rather than score garbage."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")


def entity_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Exact-match mention P/R/F1; both sides go through ``to_iob2`` so an ``I-`` after ``O`` opens a mention."""
    _check_lengths(gold, pred)
    gold2 = [to_iob2(s) for s in gold]
    pred2 = [to_iob2(s) for s in pred]
    return {
        "entity_precision": float(entity_precision(gold2, pred2, zero_division=0)),
        "entity_recall": float(entity_recall(gold2, pred2, zero_division=0)),
        "entity_f1": float(entity_f1(gold2, pred2, zero_division=0)),
    }


def token_scores(gold: list[list[str]], pred: list[list[str]], tag_names: list[str]) -> dict[str, float]:
    """Word-level F1 over the flattened tags, ``O`` included: micro (= accuracy) and macro over ``tag_names``."""
    _check_lengths(gold, pred)
    flat_gold = [t for s in gold for t in s]
    flat_pred = [t for s in pred for t in s]
    return {
        "token_micro_f1": float(f1_score(flat_gold, flat_pred, average="micro", zero_division=0)),
        "token_macro_f1": float(f1_score(flat_gold, flat_pred, labels=tag_names, average="macro",
                                         zero_division=0)),
    }


def ner_scores(gold: list[list[str]], pred: list[list[str]], tag_names: list[str]) -> dict[str, float]:
    """Entity and token scores in one dict, the form results files store."""
    return {**entity_scores(gold, pred), **token_scores(gold, pred, tag_names)}
