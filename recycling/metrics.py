"""Classification metrics and their aggregation over seeds."""

from __future__ import annotations

import statistics

from sklearn.metrics import f1_score


def classification_scores(gold: list[int], pred: list[int]) -> dict[str, float]:
    """Micro-F1 (= accuracy for single-label classes) and macro-F1 over the labels that occur."""
    return {
        "micro_f1": float(f1_score(gold, pred, average="micro")),
        "macro_f1": float(f1_score(gold, pred, average="macro", zero_division=0)),
    }


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation; the std of a single run is undefined (None)."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std
