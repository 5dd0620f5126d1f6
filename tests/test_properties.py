"""Property-based tests: whatever bytes a data or config file holds, the readers either read it or
stop with one ``UserError`` line that names the file (and, for line-oriented formats, the line).

Inputs are arbitrary bytes, arbitrary text, and documents that are plausible but damaged: random
JSON values in place of fields, random unicode (lone surrogate escapes included), random byte
flips, insertions and deletions in a valid file. Files a reader accepts must also survive the
task's features on a tiny tokenizer, since that is where a bad string would crash next. Below the
properties: the hostile inputs they found, each pinned as an example with its one-line error.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ner.data import read_conll
from qa.data import read_squad
from recycling.config import ExperimentConfig, FIELDS, load_config, parse_override
from recycling.errors import UserError
from tests import faults
from text_classification.data import read_split

# Hypothesis caches what it learns under ./.hypothesis unless told otherwise: keep it out of the
# repository. No example database either; a failure prints its example instead.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "er-hypothesis"))
FAST = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    # Resolved: the config loader names files by their resolved path.
    return tmp_path_factory.mktemp("properties").resolve()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from recycling.encoders import load_encoder
    from tests.helpers import save_tiny_bert

    return load_encoder(str(save_tiny_bert(tmp_path_factory.mktemp("model"))))[1]


def attempt(read, path: Path):
    """``(result, None)`` or ``(None, message)``; any other exception fails the test, traceback and all."""
    try:
        return read(path), None
    except UserError as err:
        return None, str(err)


def check_message(message: str, path: Path, data: bytes, whole_file: tuple[str, ...] = ()) -> None:
    """One line naming the file; for line-oriented formats a real line number, unless the problem
    concerns the whole file (``whole_file``: the message tails allowed without a line)."""
    assert "\n" not in message and str(path) in message, message
    if whole_file is None:
        return
    if any(message == f"{path}: {tail}" for tail in whole_file):
        return
    found = re.match(rf"{re.escape(str(path))}:(\d+): ", message)
    assert found, message
    assert 1 <= int(found.group(1)) <= max(1, len(data.splitlines())), message


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@st.composite
def damaged(draw, valid: bytes) -> bytes:
    """``valid`` with a few bytes flipped, inserted or deleted."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(("flip", "insert", "delete")))
        at = draw(st.integers(0, len(data)))
        byte = draw(st.integers(32, 126) | st.integers(0, 255))  # mostly printable: past the decoder
        if op == "insert" or not data:
            data.insert(at, byte)
        elif op == "flip":
            data[min(at, len(data) - 1)] = byte
        else:
            del data[min(at, len(data) - 1)]
    return bytes(data)


# Any unicode, lone surrogates included: JSON writes those as \ud800 escapes (or, encoded with
# surrogatepass, as bytes that are not UTF-8).
ANY_CHAR = st.characters(exclude_categories=())
ANY_TEXT = st.text(max_size=12) | st.text(ANY_CHAR, max_size=4)
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
                           max_leaves=6)


def dump_json(draw, value) -> bytes:
    text = json.dumps(value, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", errors="surrogatepass")


# ---------------------------------------------------------------- JSON lines (text classification)

JSONL_WHOLE_FILE = ("no examples",)


@st.composite
def jsonl_documents(draw) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        row = {}
        if draw(st.integers(0, 4)):
            row["text"] = draw(st.sampled_from(["a text", "zwei wörter"]) | JSON_VALUES)
        if draw(st.integers(0, 4)):
            row["label"] = draw(st.sampled_from(["yes", "no", 3]) | JSON_VALUES)
        if draw(st.booleans()):
            row[draw(ANY_TEXT)] = draw(JSON_VALUES)
        value = row if draw(st.integers(0, 9)) else draw(JSON_VALUES)
        lines.append(dump_json(draw, value))
    ending = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    return draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + ending.join(lines) + ending


VALID_JSONL = b'{"text": "cats purr", "label": "cat"}\n{"text": "dogs bark", "label": 2}\n{"text": "x"}\n'


def check_jsonl(folder: Path, data: bytes, require_labels: bool, label_names) -> None:
    path = folder / "split.txt"
    path.write_bytes(data)
    split, message = attempt(lambda p: read_split(p, require_labels=require_labels, label_names=label_names), path)
    if message is not None:
        check_message(message, path, data, JSONL_WHOLE_FILE)
        return
    assert split.texts and all(isinstance(t, str) and t.strip() and encodable(t) for t in split.texts)
    if split.labels is not None:
        assert len(split.labels) == len(split.texts)
        assert all(isinstance(x, str) and encodable(x) for x in split.labels)
        assert label_names is None or set(split.labels) <= set(label_names)
    else:
        assert not require_labels


@FAST
@given(data=st.binary(max_size=300) | st.text(max_size=200).map(str.encode) | jsonl_documents()
       | damaged(VALID_JSONL), require_labels=st.booleans(),
       label_names=st.none() | st.just(["cat", "2", "yes"]))
def test_jsonl_reader_reads_or_names_file_and_line(folder, data, require_labels, label_names):
    check_jsonl(folder, data, require_labels, label_names)


@settings(FAST, max_examples=60)
@given(data=jsonl_documents() | damaged(VALID_JSONL))
def test_accepted_jsonl_survives_features(folder, tokenizer, data):
    from text_classification.task import TextClassificationTask

    path = folder / "features.txt"
    path.write_bytes(data)
    cfg = ExperimentConfig(dataset="x", model="m", cut_layer=1)
    task = TextClassificationTask()
    try:
        dataset = task.load_file(path, cfg, {"label_names": ["2", "cat", "no", "yes"]})
    except UserError as err:
        check_message(str(err), path, data, JSONL_WHOLE_FILE)
        return
    features = task.features(dataset, "predict", tokenizer, cfg)
    assert len(features) == len(dataset.splits["predict"].texts)


# ---------------------------------------------------------------- CoNLL (NER)

CONLL_WHOLE_FILE = ("no sentences",)
TAGS = ["O", "B-X", "I-X", "B", "I", "B-Chem", "E-X", "B-", "-DOCSTART-"]


@st.composite
def conll_documents(draw) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            lines.append("")
        elif kind == 1:
            lines.append("-DOCSTART- (1)")
        else:
            word = draw(st.sampled_from(["cat", "Café", "β-catenin"]) | ANY_TEXT)
            middle = draw(st.lists(st.sampled_from(["NN", "O", "B-NP"]), max_size=2))
            tag = draw(st.sampled_from(TAGS) | st.sampled_from(TAGS) | ANY_TEXT)
            columns = [word, *middle] + ([tag] if draw(st.integers(0, 4)) else [])
            lines.append(draw(st.sampled_from(["\t", " ", "  "])).join(columns))
    ending = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = draw(st.sampled_from(["", "\ufeff"])) + ending.join(lines) + draw(st.sampled_from(["", ending]))
    return text.encode("utf-8", errors="surrogatepass")


VALID_CONLL = b"-DOCSTART- (1)\n\nAspirin\tNN\tO\tB-Chem\nhelps\tVB\tO\tO\n\nPain\tNN\tO\tI-Dis\n"


@FAST
@given(data=st.binary(max_size=300) | st.text(max_size=200).map(str.encode) | conll_documents()
       | damaged(VALID_CONLL), require_tags=st.booleans(),
       tag_names=st.none() | st.just(["O", "B-Chem", "B-Dis", "I-Dis"]))
def test_conll_reader_reads_or_names_file_and_line(folder, data, require_tags, tag_names):
    path = folder / "split.conll"
    path.write_bytes(data)
    split, message = attempt(lambda p: read_conll(p, require_tags=require_tags, tag_names=tag_names), path)
    if message is not None:
        check_message(message, path, data, CONLL_WHOLE_FILE)
        return
    assert split.sentences
    for sentence in split.sentences:
        assert sentence.words and all(w and encodable(w) and not w.isspace() for w in sentence.words)
        if sentence.tags is not None:
            assert len(sentence.tags) == len(sentence.words)
            assert tag_names is None or set(sentence.tags) <= set(tag_names)
    assert split.labelled or not require_tags


@settings(FAST, max_examples=60)
@given(data=conll_documents() | damaged(VALID_CONLL))
def test_accepted_conll_survives_features_and_predictions(folder, tokenizer, data):
    import torch

    from ner.task import NerTask

    path = folder / "features.conll"
    path.write_bytes(data)
    cfg = ExperimentConfig(dataset="x", model="m", cut_layer=1, task="ner", metric="entity_f1", max_length=16,
                           window_stride=4)
    task = NerTask()
    tags = ["O", "B", "B-Chem", "B-X", "I", "I-X"]
    try:
        dataset = task.load_file(path, cfg, {"label_names": tags})
    except UserError as err:
        check_message(str(err), path, data, CONLL_WHOLE_FILE)
        return
    features = task.features(dataset, "predict", tokenizer, cfg)
    outputs = [torch.randn(len(ids), len(tags)) for ids in features.input_ids]
    predicted = task.predict(dataset, "predict", features, outputs)
    out = folder / "predicted.conll"
    task.write_predictions(dataset, "predict", predicted, out)
    again = read_conll(out, require_tags=False)
    assert [s.words for s in again.sentences] == [s.words for s in dataset.splits["predict"].sentences]


# ---------------------------------------------------------------- SQuAD JSON (QA)

def squad_document() -> dict:
    return {"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": "The cat sat on the mat.", "qas": [
            {"id": "q1", "question": "Who sat?", "answers": [{"text": "cat", "answer_start": 4}]},
            {"id": "q2", "question": "Where?", "answers": [{"text": "the mat", "answer_start": 15}]}]},
        {"context": "A dog barked.", "qas": [{"id": "q3", "question": "What barked?", "answers": []}]}]}]}


def containers(value, trail=()):
    """Every (path, container) in a JSON document, the document itself first."""
    yield trail, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        if isinstance(child, (dict, list)):
            yield from containers(child, trail + (key,))


@st.composite
def squad_documents(draw) -> bytes:
    doc = squad_document()
    for _ in range(draw(st.integers(1, 3))):
        spots = list(containers(doc))
        _, target = draw(st.sampled_from(spots))
        if isinstance(target, dict):
            key = draw(st.sampled_from(sorted(target) + ["answers", "is_impossible", "id"]) | ANY_TEXT)
            if draw(st.integers(0, 3)) == 0:
                target.pop(key, None)
            else:
                target[key] = draw(JSON_VALUES)
        elif target:
            target[draw(st.integers(0, len(target) - 1))] = draw(JSON_VALUES)
        else:
            target.append(draw(JSON_VALUES))
    return dump_json(draw, doc)


VALID_SQUAD = json.dumps(squad_document(), indent=1).encode()


@FAST
@given(data=st.binary(max_size=300) | st.text(max_size=200).map(str.encode) | squad_documents()
       | damaged(VALID_SQUAD), require_answers=st.booleans())
def test_squad_reader_reads_or_names_file(folder, data, require_answers):
    path = folder / "split.json"
    path.write_bytes(data)
    split, message = attempt(lambda p: read_squad(p, require_answers=require_answers), path)
    if message is not None:
        check_message(message, path, data, whole_file=None)
        return
    assert split.examples and len({ex.id for ex in split.examples}) == len(split.examples)
    for ex in split.examples:
        assert all(encodable(s) for s in (ex.id, ex.question, ex.context, *ex.answers))
        assert all(ex.context[s:s + len(a)] == a for a, s in zip(ex.answers, ex.answer_starts, strict=True))
        assert ex.answers or not require_answers


@settings(FAST, max_examples=60)
@given(data=squad_documents())
def test_accepted_squad_survives_features_and_predictions(folder, tokenizer, data):
    import torch

    from qa.task import QaTask

    path = folder / "features.json"
    path.write_bytes(data)
    cfg = ExperimentConfig(dataset="x", model="m", cut_layer=1, task="qa", metric="f1", max_length=32,
                           window_stride=8)
    task = QaTask()
    try:
        dataset = task.load_file(path, cfg, {})
        features = task.features(dataset, "predict", tokenizer, cfg)
    except UserError as err:
        check_message(str(err), path, data, whole_file=None)
        return
    outputs = [torch.randn(len(ids), 2) for ids in features.input_ids]
    predicted = task.predict(dataset, "predict", features, outputs)
    assert set(predicted) == {ex.id for ex in dataset.splits["predict"].examples}
    if task.labelled(dataset, "predict"):
        assert 0 <= task.score(dataset, "predict", features, outputs)["f1"] <= 1


# ---------------------------------------------------------------- YAML config

VALID_YAML = "dataset: toy\nmodel: m\ncut_layer: 2\nseeds: [0, 1]\nlearning_rate: {full: 1.0e-4}\n"
HOSTILE_SCALARS = ["2001-13-45", "2001-02-03", "!!int xyz", "!!float x", "!!binary xyz", "!!set {1, 2}",
                   '"\\ud800"', "*nope", "&a [*a]", ".nan", ".inf", "-.inf", "1e999", "0x" + "f" * 40,
                   "1" * 5000, "[" * 300 + "]" * 300, "{a: 1, a: 2}", "? [1]\n  : 2", "~", "yes", "''", "|\n  x",
                   "!!python/object:os.system x", "!!timestamp 2001-01-01 25:00:00"]


@st.composite
def yaml_documents(draw) -> bytes:
    lines = VALID_YAML.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(sorted(FIELDS)) | st.sampled_from(sorted(FIELDS))
                   | st.sampled_from(["1", "~", "[x]", "dataset", "base"]) | st.text(max_size=8))
        value = draw(st.sampled_from(HOSTILE_SCALARS) | st.text(max_size=12)
                     | JSON_VALUES.map(lambda v: json.dumps(v)))
        if key == "base":  # a base file names another file; its errors name that one
            value = "no-such-base.yaml"
        lines.insert(draw(st.integers(0, len(lines))), f"{key}: {value}")
    return "\n".join(lines).encode("utf-8", errors="surrogatepass")


@FAST
@given(data=st.binary(max_size=300) | st.text(max_size=200).map(str.encode) | yaml_documents()
       | damaged(VALID_YAML.encode()))
def test_config_loader_reads_or_names_the_file(folder, data):
    path = folder / "experiment.yaml"
    path.write_bytes(data)
    config, message = attempt(load_config, path)
    if message is None:
        assert isinstance(config[0], ExperimentConfig)
        return
    if message.startswith("config file not found: ") and "no-such-base.yaml" in message:
        return  # the base chain's missing file is named instead, which is the file to fix
    check_message(message, path, data, whole_file=None)
    found = re.match(rf"{re.escape(str(path))}:(\d+): ", message)
    if found:  # a line YAML pointed at must exist in the file
        assert 1 <= int(found.group(1)) <= len(data.splitlines()) + 1, message


@FAST
@given(text=st.text(max_size=40) | st.sampled_from(HOSTILE_SCALARS).map(lambda v: "seeds=" + v))
def test_set_overrides_parse_or_say_which(text):
    try:
        key, _ = parse_override(text)
    except UserError as err:
        assert "\n" not in str(err) and str(err).startswith("--set ")
        return
    assert key == text.split("=", 1)[0].strip()


# ---------------------------------------------------------------- the examples they found, pinned

YAML_FAULTS = {
    "an invalid date (2001-13-45) as a value": ("dataset: toy\nseeds: 2001-13-45\n", r":2: invalid YAML \(cannot read"),
    "a list nested 3000 levels deep": ("a: " + "[" * 3000 + "]" * 3000 + "\n", r": invalid YAML \(nested too deeply\)"),
    "a key that is a number": ("1: 2\n", r": key 1 is not a setting name"),
    "a key given twice": ("dataset: a\nmodel: m\ndataset: b\n", r":3: invalid YAML \(key 'dataset' given twice\)"),
    "a \\ud800 escape (half a character)": ('dataset: "\\ud800"\n',
                                           r":1: invalid YAML \(a string with half a character"),
    "a NUL character": ("dataset: a\x00\n", r":1: invalid YAML \(character 0x0 is not allowed\)"),
    "an integer of 5,000 digits": ("cut_layer: " + "1" * 5000 + "\n", r":1: invalid YAML \(cannot read this value"),
    "a list where a mapping belongs": ("- a\n- b\n", r": expected a mapping of keys to values"),
}


@pytest.mark.parametrize("fault", YAML_FAULTS)
def test_hostile_yaml_is_one_line_with_the_file(tmp_path, fault):
    text, pattern = YAML_FAULTS[fault]
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with pytest.raises(UserError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(str(path.resolve())) and re.search(pattern, message) and "\n" not in message
    faults.record("config", f"a YAML config file with {fault}", message, tmp_path.resolve())


def test_config_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"dataset: toy\nmodel: caf\xe9\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert str(err.value) == f"{path.resolve()}:2: not valid UTF-8 (byte 0xe9)"
    faults.record("config", "a YAML config file in Latin-1 (not UTF-8)", str(err.value), tmp_path.resolve())


def test_config_that_is_a_directory(tmp_path):
    (tmp_path / "c.yaml").mkdir()
    with pytest.raises(UserError) as err:
        load_config(tmp_path / "c.yaml")
    assert str(err.value) == f"{(tmp_path / 'c.yaml').resolve()}: is a directory, not a config file"
    faults.record("config", "a config path that is a directory", str(err.value), tmp_path.resolve())


def test_unreadable_config(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("dataset: toy\n")

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(Path, "read_bytes", refuse)  # tests may run as root, where chmod 000 reads anyway
    with pytest.raises(UserError) as err:
        load_config(path)
    assert str(err.value) == f"{path.resolve()}: cannot read (Permission denied)"
    faults.record("config", "a config file without read permission", str(err.value), tmp_path.resolve())


@pytest.mark.parametrize("text, expected", [
    ("seeds=[0,", "--set seeds: cannot parse value '[0,' (expected the node content, but found '<stream end>')"),
    ("seeds=2001-13-45",
     "--set seeds: cannot parse value '2001-13-45' (cannot read this value (month must be in 1..12))"),
    ("learning_rate={full: 1, full: 2}", "--set learning_rate: cannot parse value '{full: 1, full: 2}' "
                                         "(key 'full' given twice)"),
])
def test_bad_set_values(text, expected):
    with pytest.raises(UserError) as err:
        parse_override(text)
    assert str(err.value) == expected
    faults.record("config", f"--set {text}", str(err.value))
