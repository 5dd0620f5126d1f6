import json
from pathlib import Path

import pytest

from recycling.errors import UserError
from tests import faults
from tests.helpers import write_jsonl, write_toy_dataset
from text_classification.data import load_dataset, read_split


def test_reads_the_shared_release(shared_data):
    ds = load_dataset(shared_data, "sciie-relation-extraction")
    assert [len(ds.splits[s].texts) for s in ("train", "dev", "test")] == [3219, 455, 974]
    assert len(ds.label_names) == 7 and ds.label_names == sorted(ds.label_names)
    assert all(0 <= i < 7 for i in ds.label_ids("test"))


def test_other_field_names_and_extra_keys(tmp_path):
    path = write_jsonl(tmp_path / "x.txt", [{"sentence": "a b", "y": 3, "metadata": {}}])
    split = read_split(path, text_field="sentence", label_field="y")
    assert split.texts == ["a b"] and split.labels == ["3"]


NOT_A_LABEL = r"x\.txt:2: label must be a string or an integer, got "
BAD_LINES = {
    "a line that is not valid JSON": ('{"text": "ok", "label": "a"', r"x\.txt:2: malformed JSON"),
    "a line without the text field": ('{"label": "a"}', r"x\.txt:2: missing field 'text'"),
    "a line without the label field": ('{"text": "ok"}', r"x\.txt:2: missing field 'label'"),
    "a text of only spaces": ('{"text": "   ", "label": "a"}', r"x\.txt:2: empty text"),
    "a line that is a JSON list": ('["text", "label"]', r"x\.txt:2: expected a JSON object"),
    "a label that is null": ('{"text": "ok", "label": null}', NOT_A_LABEL + "null$"),
    "a label that is true": ('{"text": "ok", "label": true}', NOT_A_LABEL + "true$"),
    "a label that is 1.5": ('{"text": "ok", "label": 1.5}', NOT_A_LABEL + r"1\.5$"),
    "a label that is NaN": ('{"text": "ok", "label": NaN}', NOT_A_LABEL + "NaN$"),
    "a label that is a list": ('{"text": "ok", "label": ["a"]}', NOT_A_LABEL + "a list$"),
    "a label that is an object": ('{"text": "ok", "label": {}}', NOT_A_LABEL + "an object$"),
    "a label with a \\ud800 escape (half a character)": ('{"text": "ok", "label": "\\ud800"}',
                                                        r"x\.txt:2: label is not valid Unicode"),
    "a text with a \\udc00 escape (half a character)": ('{"text": "a\\udc00", "label": "a"}',
                                                       r"x\.txt:2: text in field 'text' is not valid Unicode"),
    "an integer of 5,000 digits": ('{"text": "ok", "label": ' + "7" * 5000 + "}",
                                   r"x\.txt:2: malformed JSON \(Exceeds the limit \(4300 digits\)"),
    "a line of 100,000 nested [": ("[" * 100_000, r"x\.txt:2: malformed JSON \(nested too deeply\)"),
}


@pytest.mark.parametrize("fault", BAD_LINES)
def test_bad_lines_name_file_and_line(tmp_path, fault):
    line, message = BAD_LINES[fault]
    path = tmp_path / "x.txt"
    path.write_text(json.dumps({"text": "fine", "label": "a"}) + "\n" + line + "\n")
    with pytest.raises(UserError, match=message) as err:
        read_split(path)
    assert str(err.value).startswith(f"{path}:2: ") and "\n" not in str(err.value)
    faults.record("data", f"{fault} in a JSON-lines file", str(err.value), tmp_path)


def test_integer_labels_are_their_decimal_string_and_a_bom_is_dropped(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"text": "a", "label": 3}\r\n{"text": "b", "label": -12}\r\n')
    assert read_split(path).labels == ["3", "-12"]


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes(b'{"text": "a", "label": "x"}\n\n{"text": "caf\xe9", "label": "x"}\n')
    with pytest.raises(UserError) as err:
        read_split(path)
    assert str(err.value) == f"{path}:3: not valid UTF-8 (byte 0xe9 at column 14)"
    faults.record("data", "a JSON-lines file in Latin-1 (not UTF-8)", str(err.value), tmp_path)


def test_a_directory_a_missing_file_and_an_unreadable_one(tmp_path, monkeypatch):
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(UserError) as err:
        read_split(tmp_path / "dir.txt")
    assert str(err.value) == f"{tmp_path / 'dir.txt'}: is a directory, not a data file"
    faults.record("data", "a JSON-lines split that is a directory", str(err.value), tmp_path)
    with pytest.raises(UserError) as err:
        read_split(tmp_path / "none.txt")
    assert str(err.value) == f"missing data file: {tmp_path / 'none.txt'}"
    faults.record("data", "a JSON-lines split file that does not exist", str(err.value), tmp_path)
    path = write_jsonl(tmp_path / "x.txt", [{"text": "a", "label": "b"}])

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(Path, "read_bytes", refuse)  # tests may run as root, where chmod 000 reads anyway
    with pytest.raises(UserError) as err:
        read_split(path)
    assert str(err.value) == f"{path}: cannot read (Permission denied)"
    faults.record("data", "a JSON-lines file without read permission", str(err.value), tmp_path)


def test_file_without_examples(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("\n  \n")
    with pytest.raises(UserError) as err:
        read_split(path)
    assert str(err.value) == f"{path}: no examples"
    faults.record("data", "a JSON-lines file of blank lines", str(err.value), tmp_path)


def test_label_unseen_in_train_is_an_error(tmp_path):
    folder = write_toy_dataset(tmp_path)
    write_jsonl(folder / "test.txt", [{"text": "a bird sings", "label": "bird"}])
    with pytest.raises(UserError, match=r"test\.txt: label\(s\) not in train: bird") as err:
        load_dataset(tmp_path, "toy")
    faults.record("data", "a test label that train lacks (text classification)", str(err.value), tmp_path)


def test_missing_directories(tmp_path):
    with pytest.raises(UserError, match="data directory not found") as err:
        load_dataset(tmp_path / "nowhere", "toy")
    faults.record("data", "a --data-dir that does not exist", str(err.value), tmp_path)
    with pytest.raises(UserError, match="dataset 'toy' not found") as err:
        load_dataset(tmp_path, "toy")
    faults.record("data", "a dataset name without its folder", str(err.value), tmp_path)


def test_head_keeps_label_names_of_the_whole_train_file(tmp_path):
    write_toy_dataset(tmp_path)
    ds = load_dataset(tmp_path, "toy").head(1)
    assert len(ds.splits["train"].texts) == 1 and ds.label_names == ["cat", "dog"]


# ---- a file to predict on (TextClassificationTask.load_file / labelled / write_predictions)

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from recycling.encoders import load_encoder
    from tests.helpers import save_tiny_bert

    return load_encoder(str(save_tiny_bert(tmp_path_factory.mktemp("model"))))[1]


def tc_config(**kw):
    from recycling.config import ExperimentConfig

    return ExperimentConfig(dataset="toy", model="m", cut_layer=1, max_length=16, **kw)


SAVED = {"label_names": ["cat", "dog"], "examples": {"train": 24}}


def test_predict_file_with_and_without_labels_gives_the_same_features(tmp_path, tokenizer):
    import torch

    from text_classification.task import TextClassificationTask

    task, cfg = TextClassificationTask(), tc_config()
    rows = [{"text": "cats purr loudly", "label": "cat"}, {"text": "dogs bark", "label": "dog"}]
    labelled = task.load_file(write_jsonl(tmp_path / "l.txt", rows), cfg, SAVED)
    bare = task.load_file(write_jsonl(tmp_path / "u.txt", [{"text": r["text"]} for r in rows]), cfg, SAVED)
    assert list(labelled.splits) == list(bare.splits) == ["predict"]
    assert task.labelled(labelled, "predict") and not task.labelled(bare, "predict")
    assert labelled.label_names == bare.label_names == ["cat", "dog"]
    with_labels, without = (task.features(d, "predict", tokenizer, cfg) for d in (labelled, bare))
    assert with_labels.input_ids == without.input_ids
    assert with_labels.targets["labels"] == [0, 1] and len(without.targets["labels"]) == 2
    outputs = [torch.tensor([0.2, 0.9]), torch.tensor([0.1, -1.0])]
    assert task.predict(bare, "predict", without, outputs) == ["dog", "cat"]
    assert task.score(labelled, "predict", with_labels, outputs)["micro_f1"] == 0.0
    with pytest.raises(UserError, match="not every text has a label"):
        task.score(bare, "predict", without, outputs)


def test_a_file_where_only_some_lines_have_labels_is_unlabelled(tmp_path):
    from text_classification.task import TextClassificationTask

    path = write_jsonl(tmp_path / "x.txt", [{"text": "a", "label": "zebra"}, {"text": "b"}])
    data = TextClassificationTask().load_file(path, tc_config(), SAVED)
    assert data.splits["predict"].labels is None and data.splits["predict"].texts == ["a", "b"]


def test_a_label_the_model_does_not_know_is_one_line_with_file_and_line(tmp_path):
    from text_classification.task import TextClassificationTask

    path = write_jsonl(tmp_path / "x.txt", [{"text": "a", "label": "cat"}, {"text": "b", "label": "bird"}])
    with pytest.raises(UserError) as err:
        TextClassificationTask().load_file(path, tc_config(), SAVED)
    assert str(err.value) == f"{path}:2: label 'bird' is not one the model was trained on (it knows: cat, dog)"
    faults.record("data", "a label the saved model does not know, in a JSON-lines file to predict on",
                  str(err.value), tmp_path)


def test_a_saved_description_without_labels_is_refused(tmp_path):
    from text_classification.task import TextClassificationTask

    path = write_jsonl(tmp_path / "x.txt", [{"text": "a"}])
    with pytest.raises(UserError, match="no list of label names"):
        TextClassificationTask().load_file(path, tc_config(), {"examples": {}})


def test_predictions_round_trip_under_the_configured_field_names(tmp_path, tokenizer):
    import torch

    from text_classification.task import TextClassificationTask

    task, cfg = TextClassificationTask(), tc_config(text_field="sentence", label_field="y")
    texts = ["cats purr", "zwei wörter \"quoted\"", "dogs\tbark"]
    data = task.load_file(write_jsonl(tmp_path / "in.txt", [{"sentence": t, "id": i} for i, t in enumerate(texts)]),
                          cfg, SAVED)
    features = task.features(data, "predict", tokenizer, cfg)
    predicted = task.predict(data, "predict", features, [torch.tensor([0.0, 1.0 * i]) for i in range(3)])
    out = tmp_path / "deeper" / "predictions.jsonl"
    task.write_predictions(data, "predict", predicted, out)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows == [{"sentence": t, "y": p} for t, p in zip(texts, predicted)]
    back = read_split(out, "sentence", "y", label_names=SAVED["label_names"])
    assert back.texts == texts and back.labels == predicted
    assert [p.name for p in out.parent.iterdir()] == ["predictions.jsonl"]  # no temporary file left behind
