import pytest

from recycling.metrics import classification_scores, mean_std


def test_known_case():
    gold = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 1, 0]
    scores = classification_scores(gold, pred)
    assert scores["micro_f1"] == pytest.approx(4 / 6)
    # per class F1: class 0: p=2/3 r=2/3 -> 2/3; class 1: p=2/3 r=1 -> 0.8; class 2: 0
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0) / 3)


def test_perfect_and_mean_std():
    assert classification_scores([1, 2], [1, 2]) == {"micro_f1": 1.0, "macro_f1": 1.0}
    assert mean_std([0.5]) == (0.5, None)
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and std == pytest.approx(1.0)
