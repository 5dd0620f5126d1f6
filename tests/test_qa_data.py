import json
import logging
import re
from pathlib import Path
from typing import Any, Callable

import pytest

from qa.data import QaDataset, QaExample, QaSplit, hold_out, load_dataset, read_squad
from recycling.errors import UserError
from tests import faults

CAT = "The cat sat on the mat."
DOG = "A dog barked at night."
SUN = "The sun rises in the east."


def qa(qid: str, question: str, *answers: tuple[str, int], **extra: Any) -> dict:
    return {"id": qid, "question": question,
            "answers": [{"text": t, "answer_start": s} for t, s in answers], **extra}


def v1_file() -> dict:
    """Two articles; the first has two paragraphs; q2 has three references, two of them identical."""
    return {"version": "1.1", "data": [
        {"title": "Animals", "paragraphs": [
            {"context": CAT, "qas": [qa("q1", "Who sat?", ("cat", 4)),
                                     qa("q2", "Where?", ("the mat", 15), ("mat", 19), ("the mat", 15))]},
            {"context": DOG, "qas": [qa("q3", "What barked?", ("dog", 2))]},
        ]},
        {"title": "Sky", "paragraphs": [
            {"context": SUN, "qas": [qa("q4", "Where does it rise?", ("the east", 17))]},
        ]},
    ]}


def write_json(path: Path, content: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=1), encoding="utf-8")
    return path


def test_reads_v1_articles_paragraphs_and_all_references(tmp_path):
    path = write_json(tmp_path / "train.json", v1_file())
    split = read_squad(path)
    assert split.path == path
    assert split.examples == [
        QaExample("q1", "Who sat?", CAT, ["cat"], [4], 0),
        QaExample("q2", "Where?", CAT, ["the mat", "mat", "the mat"], [15, 19, 15], 0),
        QaExample("q3", "What barked?", DOG, ["dog"], [2], 0),
        QaExample("q4", "Where does it rise?", SUN, ["the east"], [17], 1),
    ]


def test_v2_skips_unanswerable_with_one_warning(tmp_path, caplog):
    content = {"version": "v2.0", "data": [{"title": "Animals", "paragraphs": [{"context": CAT, "qas": [
        qa("q1", "Who sat?", ("cat", 4), is_impossible=False),
        qa("q2", "Who flew?", is_impossible=True, plausible_answers=[{"text": "cat", "answer_start": 4}]),
        qa("q3", "Who swam?", is_impossible=False),  # no answers in a v2 file: unanswerable too
    ]}]}]}
    path = write_json(tmp_path / "dev-v2.0.json", content)
    with caplog.at_level(logging.WARNING, logger="qa.data"):
        split = read_squad(path)
    assert [ex.id for ex in split.examples] == ["q1"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "dev-v2.0.json" in warnings[0] and "skipped 2 unanswerable questions (SQuAD 2.0)" in warnings[0]


def _target(content: Any, path: list) -> Any:
    for key in path[:-1]:
        content = content[key]
    return content


def _set(path: list, value: Any) -> Callable[[dict], Any]:
    """An edit of the v1 fixture setting the item at ``path`` (keys and indices) to ``value``."""
    def edit(content: dict) -> Any:
        _target(content, path)[path[-1]] = value
        return content
    return edit


def _drop(path: list) -> Callable[[dict], Any]:
    """An edit of the v1 fixture deleting the item at ``path``."""
    def edit(content: dict) -> Any:
        del _target(content, path)[path[-1]]
        return content
    return edit


Q1 = ["data", 0, "paragraphs", 0, "qas", 0]

CONTENT_ERRORS = {
    "top level is a list": (lambda c: [c], 'expected a JSON object with a "data" list'),
    "no paragraphs": (_drop(["data", 0, "paragraphs"]), "article 0 ('Animals'): missing \"paragraphs\""),
    "no qas": (_drop(["data", 1, "paragraphs", 0, "qas"]), "article 1 ('Sky'): paragraph 0: missing \"qas\""),
    "no id": (_drop(["data", 1, "paragraphs", 0, "qas", 0, "id"]), "paragraph 0: question 0: missing \"id\""),
    "no answers key": (_drop(Q1 + ["answers"]), "question 'q1': missing \"answers\" list"),
    "no answers in v1": (_set(Q1 + ["answers"], []), "question 'q1': no answers"),
    "empty context": (_set(["data", 0, "paragraphs", 1, "context"], "  \n"),
                      "question 'q3': empty or missing context"),
    "blank question": (_set(Q1 + ["question"], " "), "question 'q1': empty or missing question text"),
    "answer moved": (_set(Q1 + ["answers", 0, "answer_start"], 5),
                     "question 'q1': answer 'cat' is not at answer_start 5"),
    "start is text": (_set(Q1 + ["answers", 0, "answer_start"], "4"),
                      "question 'q1': answer 'cat': answer_start is not an integer"),
    "duplicate id": (_set(["data", 1, "paragraphs", 0, "qas", 0, "id"], "q2"),
                     "question 'q2': duplicate question id"),
    "no questions": (_set(["data"], []), "no questions"),
    "answer is null": (_set(Q1 + ["answers", 0], None), "question 'q1': answer without a \"text\" string"),
    "answer text is a number": (_set(Q1 + ["answers", 0, "text"], 4), "question 'q1': answer without a \"text\""),
    "start is true": (_set(Q1 + ["answers", 0, "answer_start"], True),
                      "question 'q1': answer 'cat': answer_start is not an integer (got True)"),
    "start is null": (_set(Q1 + ["answers", 0, "answer_start"], None),
                      "question 'q1': answer 'cat': answer_start is not an integer (got None)"),
    "start is 4.0": (_set(Q1 + ["answers", 0, "answer_start"], 4.0),
                     "question 'q1': answer 'cat': answer_start is not an integer (got 4.0)"),
    "start is negative": (_set(Q1 + ["answers", 0, "answer_start"], -1), "answer 'cat' is not at answer_start -1"),
    "id is a number": (_set(Q1 + ["id"], 7), "paragraph 0: question 0: missing \"id\" string"),
    "answers is an object": (_set(Q1 + ["answers"], {"text": "cat"}), "question 'q1': missing \"answers\" list"),
    "context with a \\ud800 escape": (_set(["data", 0, "paragraphs", 1, "context"], "A dog\ud800"),
                                      "question 'q3': context is not valid Unicode (a lone surrogate escape)"),
    "id with a newline, answer moved": (lambda c: _set(Q1 + ["answers", 0, "answer_start"], 5)(
                                            _set(Q1 + ["id"], "q\n1")(c)),
                                        "question 'q\\n1': answer 'cat' is not at answer_start 5"),
}


@pytest.mark.parametrize("fault", CONTENT_ERRORS)
def test_content_errors_name_file_and_question(tmp_path, fault):
    edit, message = CONTENT_ERRORS[fault]
    path = write_json(tmp_path / "bad.json", edit(v1_file()))
    with pytest.raises(UserError) as err:
        read_squad(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text
    faults.record("data", f"SQuAD JSON: {fault}", text, tmp_path)


def test_v2_file_with_only_unanswerable_questions_is_an_error(tmp_path):
    content = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": CAT, "qas": [
        qa("q1", "Who flew?", is_impossible=True)]}]}]}
    with pytest.raises(UserError, match="no answerable questions"):
        read_squad(write_json(tmp_path / "x.json", content))


def test_file_level_errors(tmp_path):
    with pytest.raises(UserError, match=re.escape(f"missing data file: {tmp_path / 'nope.json'}")):
        read_squad(tmp_path / "nope.json")
    bad_bytes = tmp_path / "latin1.json"
    bad_bytes.write_bytes(b'{"data": [\n"caf\xe9"]}')
    with pytest.raises(UserError, match=rf"^{re.escape(str(bad_bytes))}:2: not valid UTF-8") as err:
        read_squad(bad_bytes)
    faults.record("data", "a SQuAD JSON file in Latin-1 (not UTF-8)", str(err.value), tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text('{"data": [\n  {"title": }\n]}')
    expected = f"{broken}:2:13: malformed JSON (Expecting value)"
    with pytest.raises(UserError, match="^" + re.escape(expected)) as err:
        read_squad(broken)
    faults.record("data", "a SQuAD file that is not valid JSON", str(err.value), tmp_path)


@pytest.mark.parametrize("fault, content, expected", [
    ("a SQuAD JSON file of 100,000 nested [", "[" * 100_000, "malformed JSON (nested too deeply)"),
    ("a SQuAD JSON file with an integer of 5,000 digits", '{"data": ' + "9" * 5000 + "}",
     "malformed JSON (Exceeds the limit (4300 digits) for integer string conversion)"),
])
def test_json_that_python_cannot_hold(tmp_path, fault, content, expected):
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(UserError) as err:
        read_squad(path)
    assert str(err.value) == f"{path}: {expected}"
    faults.record("data", fault, str(err.value), tmp_path)


def test_a_directory_and_an_unreadable_file(tmp_path, monkeypatch):
    (tmp_path / "d.json").mkdir()
    with pytest.raises(UserError) as err:
        read_squad(tmp_path / "d.json")
    assert str(err.value) == f"{tmp_path / 'd.json'}: is a directory, not a data file"
    faults.record("data", "a SQuAD file path that is a directory", str(err.value), tmp_path)
    path = write_json(tmp_path / "x.json", v1_file())

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(Path, "read_bytes", refuse)  # tests may run as root, where chmod 000 reads anyway
    with pytest.raises(UserError) as err:
        read_squad(path)
    assert str(err.value) == f"{path}: cannot read (Permission denied)"
    faults.record("data", "a SQuAD file without read permission", str(err.value), tmp_path)


def test_questions_without_answers_are_kept_when_answers_are_optional(tmp_path):
    content = v1_file()
    paragraph = content["data"][0]["paragraphs"][0]
    del paragraph["qas"][0]["answers"]  # q1: no key
    paragraph["qas"][1]["answers"] = []  # q2: an empty list
    content["data"][1]["paragraphs"][0]["qas"][0]["is_impossible"] = True  # q4: SQuAD 2.0 unanswerable
    split = read_squad(write_json(tmp_path / "x.json", content), require_answers=False)
    assert [(ex.id, ex.answers) for ex in split.examples] == [("q1", []), ("q2", []), ("q3", ["dog"]), ("q4", [])]
    assert not split.labelled
    full = read_squad(write_json(tmp_path / "y.json", v1_file()), require_answers=False)
    assert full.labelled and full.examples == read_squad(tmp_path / "y.json").examples
    with pytest.raises(UserError, match="question 'q1': missing \"answers\" list"):
        read_squad(tmp_path / "x.json")


def test_answers_that_are_there_are_still_checked_when_optional(tmp_path):
    content = v1_file()
    content["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 5
    with pytest.raises(UserError, match="question 'q1': answer 'cat' is not at answer_start 5"):
        read_squad(write_json(tmp_path / "x.json", content), require_answers=False)


def many_articles(n: int) -> QaSplit:
    """``n`` articles with 1 to 3 questions each, every article with its own context."""
    examples = [QaExample(f"a{a}q{q}", "?", f"context {a}", ["x"], [0], a)
                for a in range(n) for q in range(1 + a % 3)]
    return QaSplit(Path("train.json"), examples)


def test_hold_out_keeps_articles_whole_and_examples_in_order():
    split = many_articles(10)
    train, dev = hold_out(split, 0.3, seed=1)
    assert train.path == dev.path == split.path
    assert len({ex.article for ex in dev.examples}) == 3
    assert not {ex.context for ex in train.examples} & {ex.context for ex in dev.examples}
    for part in (train, dev):
        assert part.examples == [ex for ex in split.examples if ex in part.examples]
    assert sorted(ex.id for ex in train.examples + dev.examples) == sorted(ex.id for ex in split.examples)


def test_hold_out_is_seeded_and_clamped():
    split = many_articles(10)
    assert hold_out(split, 0.3, seed=7) == hold_out(split, 0.3, seed=7)
    assert len({ex.article for ex in hold_out(split, 0.01)[1].examples}) == 1
    assert len({ex.article for ex in hold_out(split, 0.99)[0].examples}) == 1
    with pytest.raises(UserError, match="at least 2 articles"):
        hold_out(many_articles(1), 0.5)


def test_head_with_int_dict_and_none():
    ex = many_articles(4).examples  # 1 + 2 + 3 + 1 = 7 examples
    data = QaDataset("toy", {s: QaSplit(Path(f"{s}.json"), list(ex)) for s in ("train", "dev", "test")}, True)
    assert data.head(None) is data
    assert [len(s.examples) for s in data.head(2).splits.values()] == [2, 2, 2]
    small = data.head({"train": 3, "dev": 1})
    assert [len(s.examples) for s in small.splits.values()] == [3, 1, 7]
    assert small.dev_held_out and small.splits["train"].path == Path("train.json")


def test_load_dataset_holds_out_dev_or_reads_dev_file(tmp_path):
    folder = tmp_path / "qa" / "toy"
    write_json(folder / "train.json", v1_file())
    write_json(folder / "dev.json", v1_file())
    held = load_dataset(tmp_path, "toy", "train.json", None, "dev.json", 0.5)
    assert held.dev_held_out and held.name == "toy"
    assert [ex.article for ex in held.splits["dev"].examples] in ([0, 0, 0], [1])
    assert held.splits["dev"].path == held.splits["train"].path == folder / "train.json"
    given = load_dataset(tmp_path, "toy", "train.json", "dev.json", "dev.json", 0.5)
    assert not given.dev_held_out
    assert len(given.splits["train"].examples) == len(given.splits["dev"].examples) == 4


@pytest.mark.parametrize("name, files", [("../toy", ()), ("a/b", ()), (".", ()), ("..", ()),
                                         ("toy", ("../train.json",)), ("toy", ("..",))])
def test_names_must_not_be_paths(tmp_path, name, files):
    write_json(tmp_path / "qa" / "toy" / "train.json", v1_file())
    train_file = files[0] if files else "train.json"
    with pytest.raises(UserError, match="not a path"):
        load_dataset(tmp_path, name, train_file, None, "train.json", 0.5)


def test_missing_data_dir_and_dataset(tmp_path):
    with pytest.raises(UserError, match=r"data directory not found: .*\(set --data-dir or ER_DATA_DIR\)"):
        load_dataset(tmp_path / "nope", "toy", "t.json", None, "t.json", 0.5)
    expected = f"dataset 'toy' not found: no folder {tmp_path / 'qa' / 'toy'}"
    with pytest.raises(UserError, match=re.escape(expected)):
        load_dataset(tmp_path, "toy", "t.json", None, "t.json", 0.5)


@pytest.mark.slow
def test_squad_v1_dev_file(shared_data):
    path = shared_data / "qa" / "squad" / "dev-v1.1.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    data = load_dataset(shared_data, "squad", "dev-v1.1.json", "dev-v1.1.json", "dev-v1.1.json", 0.1)
    dev = data.splits["dev"].examples
    assert len(dev) == 10570
    assert len({ex.article for ex in dev}) == 48
