import pytest

from qa.data import QaExample
from qa.metrics import exact_match, f1, normalize_answer, squad_scores


@pytest.mark.parametrize("text, normalized", [
    ("The  Cat!", "cat"),
    ("an apple a day", "apple day"),
    ("  Theory, anatomy\tand THE end. ", "theory anatomy and end"),  # articles only as whole words
    ("U.S.-based", "usbased"),
    ("the", ""),
])
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match_against_any_reference():
    assert exact_match("The Cat.", ["a dog", "cat"]) == 1.0
    assert exact_match("cat sat", ["cat", "a dog"]) == 0.0


def test_f1_takes_the_best_reference():
    # vs "cat sat on mat": 2 shared tokens, precision 2/2, recall 2/4; vs "dog": nothing shared.
    assert f1("the cat sat", ["cat sat on mat", "a dog"]) == pytest.approx(2 / 3)
    assert f1("the cat sat", ["a dog"]) == 0.0
    assert f1("Cat sat!", ["the cat sat"]) == 1.0


def test_f1_counts_repeated_tokens_with_multiplicity():
    # "x x y" vs "x y y": common = {x: 1, y: 1}, 2 tokens; precision 2/3, recall 2/3.
    assert f1("x x y", ["x y y"]) == pytest.approx(2 / 3)


def test_f1_with_empty_token_lists():
    assert f1("the", ["a"]) == 1.0  # both normalize to nothing
    assert f1("", ["cat"]) == 0.0
    assert f1("cat", ["the"]) == 0.0


def test_no_references_is_a_caller_error():
    with pytest.raises(ValueError):
        f1("cat", [])
    with pytest.raises(ValueError):
        exact_match("cat", [])


def example(qid: str, *answers: str) -> QaExample:
    return QaExample(qid, "?", "context", list(answers), [0] * len(answers), 0)


def test_squad_scores_are_fraction_means_with_missing_predictions_as_empty():
    examples = [example("q1", "cat sat on mat", "a dog"), example("q2", "Paris"), example("q3", "blue")]
    scores = squad_scores({"q1": "the cat sat", "q2": "paris.", "unrelated": "blue"}, examples)
    # q1: EM 0, F1 2/3; q2: EM 1, F1 1; q3 missing: 0, 0.
    assert scores == {"exact_match": pytest.approx(1 / 3), "f1": pytest.approx((2 / 3 + 1) / 3)}
