import pytest

from ner.metrics import entity_scores, ner_scores, token_scores


def test_entity_scores_partial_match():
    # gold: PER(0-1), LOC(3), ORG(5); pred: PER(0-1) exact, LOC(2-3) with the wrong span.
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG"]]
    pred = [["B-PER", "I-PER", "B-LOC", "I-LOC", "O", "O"]]
    scores = entity_scores(gold, pred)
    assert scores["entity_precision"] == pytest.approx(1 / 2)
    assert scores["entity_recall"] == pytest.approx(1 / 3)
    assert scores["entity_f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))  # 0.4


def test_wrong_type_is_a_wrong_entity():
    gold = [["B-PER", "O", "B-LOC"], ["B-PER"]]
    pred = [["B-LOC", "O", "B-LOC"], ["B-ORG"]]
    scores = entity_scores(gold, pred)
    assert scores == pytest.approx({"entity_precision": 1 / 3, "entity_recall": 1 / 3, "entity_f1": 1 / 3})


def test_i_after_o_starts_a_mention():
    gold = [["O", "B-X", "I-X", "O", "B-X"]]
    pred = [["O", "I-X", "I-X", "O", "I-X"]]
    assert entity_scores(gold, pred) == {"entity_precision": 1.0, "entity_recall": 1.0, "entity_f1": 1.0}
    # Gold written in IOB1 scores the same as its IOB2 form.
    assert entity_scores(pred, gold)["entity_f1"] == 1.0


def test_adjacent_mentions_are_two_entities():
    gold = [["B-X", "B-X"]]
    pred = [["B-X", "I-X"]]  # one merged mention: matches neither gold mention
    assert entity_scores(gold, pred) == {"entity_precision": 0.0, "entity_recall": 0.0, "entity_f1": 0.0}


def test_no_entities_anywhere_scores_zero():
    assert entity_scores([["O", "O"]], [["O", "O"]]) == {
        "entity_precision": 0.0, "entity_recall": 0.0, "entity_f1": 0.0}


GOLD = [["O", "B-X", "I-X"], ["O", "O"]]
PRED = [["O", "B-X", "O"], ["B-X", "O"]]


def test_token_scores_count_o():
    # Flattened: gold O B I O O, pred O B O B O -> 3 of 5 right.
    # Per tag: O p=2/3 r=2/3 f=2/3; B-X p=1/2 r=1 f=2/3; I-X never predicted f=0.
    scores = token_scores(GOLD, PRED, ["O", "B-X", "I-X"])
    assert scores["token_micro_f1"] == pytest.approx(3 / 5)
    assert scores["token_macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)


def test_token_macro_averages_over_tag_names():
    # A tag in tag_names that neither side uses still counts, as an F1 of 0.
    scores = token_scores(GOLD, PRED, ["O", "B-X", "I-X", "B-Y"])
    assert scores["token_macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 4)
    assert scores["token_micro_f1"] == pytest.approx(3 / 5)


def test_ner_scores_merges_both():
    scores = ner_scores(GOLD, PRED, ["O", "B-X", "I-X"])
    assert set(scores) == {"entity_precision", "entity_recall", "entity_f1", "token_micro_f1", "token_macro_f1"}
    # gold X(1-2); pred X(1), X(3): nothing matches exactly.
    assert scores["entity_f1"] == 0.0 and scores["token_micro_f1"] == pytest.approx(3 / 5)


@pytest.mark.parametrize("gold,pred", [
    ([["O"], ["O"]], [["O"]]),
    ([["O", "B-X"]], [["O"]]),
])
def test_length_mismatch_is_a_programming_error(gold, pred):
    with pytest.raises(ValueError):
        entity_scores(gold, pred)
    with pytest.raises(ValueError):
        token_scores(gold, pred, ["O", "B-X"])
