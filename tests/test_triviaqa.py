"""TriviaQA -> SQuAD v1.1: context choice, answer search, dropped questions, the deterministic
train/dev split, atomic files, and the command line (offline route and the no-network error)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qa.triviaqa import (SEPARATOR, convert_record, convert_split, find_answer, prepare,
                         split_train, write_squad)
from recycling.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "QA_Scripts" / "prepare_triviaqa.py"


def record(qid: str, aliases: list[str], search: list[str] = (), wiki: list[str] = (),
           value: str | None = None) -> dict:
    """A record in the Hugging Face trivia_qa/rc layout (only the fields the converter reads
    are filled with meaningful values)."""
    return {
        "question": f"question {qid}?", "question_id": qid, "question_source": "http://example.org",
        "entity_pages": {"doc_source": ["TagMe"] * len(wiki), "filename": ["w.txt"] * len(wiki),
                         "title": ["W"] * len(wiki), "wiki_context": list(wiki)},
        "search_results": {"description": [""] * len(search), "filename": ["s.txt"] * len(search),
                           "rank": list(range(len(search))), "title": ["S"] * len(search),
                           "url": ["http://s"] * len(search), "search_context": list(search)},
        "answer": {"aliases": list(aliases), "normalized_aliases": [a.lower() for a in aliases],
                   "matched_wiki_entity_name": "", "normalized_matched_wiki_entity_name": "",
                   "normalized_value": (value or aliases[0]).lower(), "type": "WikipediaEntity",
                   "value": value or aliases[0]},
    }


def fixture_records() -> dict[str, list[dict]]:
    train = [
        record("tq_search", ["Paris"], search=["Nothing here.", "The capital is Paris."],
               wiki=["Paris is in the wiki."]),
        record("tq_wiki_only", ["Nile"], wiki=["Rivers: the Nile is long."]),
        record("tq_case", ["Thames", "River Thames"], search=["London sits on the river thames."]),
        record("tq_earliest", ["Mahatma Gandhi", "Gandhi"], search=["Gandhi, called Mahatma Gandhi."]),
        record("tq_none", ["Everest"], search=["A mountain in Nepal."], wiki=["Still no name."]),
        record("tq_value", [], search=["The answer is Oxygen."], value="Oxygen"),
        record("tq_extra1", ["blue"], search=["The sky is blue."]),
        record("tq_extra2", ["Mars"], search=["Mars is red."]),
    ]
    validation = [
        record("tq_val1", ["Au"], search=["Gold has the symbol Au."]),
        record("tq_val2", ["Zeus"], wiki=["Zeus ruled Olympus."]),
        record("tq_val_none", ["Hera"], search=["Nobody here."]),
    ]
    return {"train": train, "validation": validation}


def span(article: dict) -> tuple[str, int, str]:
    paragraph = article["paragraphs"][0]
    answer = paragraph["qas"][0]["answers"][0]
    return answer["text"], answer["answer_start"], paragraph["context"]


# --- one record ---------------------------------------------------------------------------------

def test_answer_in_search_context_is_located_in_the_joined_context():
    article = convert_record(fixture_records()["train"][0])
    text, start, context = span(article)
    assert context == "Nothing here." + SEPARATOR + "The capital is Paris."  # wiki ignored
    assert (text, start) == ("Paris", context.index("Paris"))
    assert article["title"] == "tq_search" and article["paragraphs"][0]["qas"][0]["id"] == "tq_search"


def test_wiki_context_only_without_search_contexts():
    text, start, context = span(convert_record(record("w", ["Nile"], wiki=["a Nile", "b"])))
    assert context == "a Nile" + SEPARATOR + "b"
    assert context[start:start + len(text)] == text == "Nile"


def test_case_insensitive_match_keeps_the_context_spelling():
    text, start, context = span(convert_record(fixture_records()["train"][2]))
    # "River Thames" starts before "Thames" in the lowered text, so it wins; the text is the context's own.
    assert text == "river thames" and context[start:start + len(text)] == text


def test_exact_spelling_beats_an_earlier_case_insensitive_one():
    assert find_answer("apple pie and Apple Inc.", ["Apple"]) == ("Apple", 14)


def test_earliest_alias_wins_and_ties_go_to_the_longest():
    assert find_answer("Gandhi, called Mahatma Gandhi.", ["Mahatma Gandhi", "Gandhi"]) == ("Gandhi", 0)
    assert find_answer("in New York City", ["New York", "New York City"]) == ("New York City", 3)


def test_value_is_a_candidate_and_regex_characters_are_literal():
    assert span(convert_record(record("v", [], search=["is Oxygen."], value="Oxygen")))[:2] == ("Oxygen", 3)
    assert find_answer("costs $5 (approx.)", ["$5 (approx.)"]) == ("$5 (approx.)", 6)


def test_no_alias_in_context_gives_none():
    assert convert_record(fixture_records()["train"][4]) is None
    # The answer is only in the wiki text, but search contexts exist, so they are the context.
    assert convert_record(record("s", ["Rome"], search=["no"], wiki=["Rome"])) is None


def test_max_context_chars_cuts_the_context_and_answers_past_it():
    long = record("c", ["end"], search=["x" * 20 + " end"])
    assert convert_record(long, max_context_chars=10) is None
    text, start, context = span(convert_record(long, max_context_chars=24))
    assert len(context) == 24 and (text, start) == ("end", 21)


# --- splits and files ---------------------------------------------------------------------------

def test_convert_split_counts_dropped():
    kept, dropped = convert_split(fixture_records()["train"])
    assert dropped == 1 and len(kept) == 7
    assert "tq_none" not in {a["title"] for a in kept}


def test_split_train_is_deterministic_and_order_independent():
    items = [{"title": f"q{i}"} for i in range(200)]
    train, dev = split_train(items, fraction=0.15, seed=0)
    assert len(dev) == 30 and len(train) == 170
    assert {i["title"] for i in train}.isdisjoint(i["title"] for i in dev)
    assert split_train(items, seed=0) == (train, dev)
    _, dev_reversed = split_train(items[::-1], seed=0)
    assert sorted(i["title"] for i in dev_reversed) == sorted(i["title"] for i in dev)
    assert split_train(items, seed=1)[1] != dev
    assert [i["title"] for i in train] == sorted((i["title"] for i in train), key=lambda t: int(t[1:]))
    with pytest.raises(UserError):
        split_train(items, fraction=1.0)


def test_write_squad_is_atomic_and_valid(tmp_path):
    path = write_squad(tmp_path / "sub" / "x.json", [{"title": "t", "paragraphs": []}])
    assert json.loads(path.read_text(encoding="utf-8")) == {"version": "1.1",
                                                            "data": [{"title": "t", "paragraphs": []}]}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temporary file left behind


def check_squad_file(path: Path) -> list[str]:
    """The question ids of a SQuAD v1.1 file whose answers all sit at their answer_start."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["version"] == "1.1"
    ids = []
    for article in doc["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                for answer in qa["answers"]:
                    start = answer["answer_start"]
                    assert paragraph["context"][start:start + len(answer["text"])] == answer["text"]
                ids.append(qa["id"])
    return ids


def test_prepare_writes_three_files(tmp_path):
    counts = prepare(fixture_records(), tmp_path)
    assert counts == {"train": 6, "dev": 1, "test": 2, "dropped_train": 1, "dropped_validation": 1}
    ids = {name: check_squad_file(tmp_path / f"{name}.json") for name in ("train", "dev", "test")}
    assert set(ids["test"]) == {"tq_val1", "tq_val2"}
    assert len(set(ids["train"]) | set(ids["dev"])) == 7


def test_prepare_requires_both_source_splits(tmp_path):
    with pytest.raises(UserError, match="validation"):
        prepare({"train": fixture_records()["train"]}, tmp_path)


# --- command line -------------------------------------------------------------------------------

def write_jsonl(folder: Path) -> Path:
    folder.mkdir()
    for split, records in fixture_records().items():
        lines = "".join(json.dumps(r) + "\n" for r in records)
        (folder / f"{split}.jsonl").write_text(lines, encoding="utf-8")
    return folder


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_from_json_dir_end_to_end(tmp_path):
    source = write_jsonl(tmp_path / "records")
    out = tmp_path / "out"
    done = run_cli("--out", str(out), "--from-json-dir", str(source))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    assert "1 dropped" in done.stderr
    counts = {name: len(check_squad_file(out / f"{name}.json")) for name in ("train", "dev", "test")}
    assert counts == {"train": 6, "dev": 1, "test": 2}


def test_cli_offline_route_never_imports_datasets(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import prepare_triviaqa

    monkeypatch.setitem(sys.modules, "datasets", None)  # any import of it would now fail
    source = write_jsonl(tmp_path / "records")
    assert prepare_triviaqa.main(["--out", str(tmp_path / "out"), "--from-json-dir", str(source)]) == 0


def test_cli_without_network_fails_with_one_line(tmp_path):
    done = run_cli("--out", str(tmp_path / "out"))
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "trivia_qa" in last and "network" in last
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_cli_missing_and_bad_record_files(tmp_path):
    done = run_cli("--out", str(tmp_path / "out"), "--from-json-dir", str(tmp_path))
    assert done.returncode == 2 and done.stderr.startswith("error: missing TriviaQA record file")
    source = write_jsonl(tmp_path / "records")
    (source / "validation.jsonl").write_text("{not json\n", encoding="utf-8")
    done = run_cli("--out", str(tmp_path / "out"), "--from-json-dir", str(source))
    assert done.returncode == 2 and "validation.jsonl:1: invalid JSON" in done.stderr
