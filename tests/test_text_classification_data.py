import json

import pytest

from recycling.errors import UserError
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


@pytest.mark.parametrize("line,message", [
    ('{"text": "ok", "label": "a"', r"x\.txt:2: malformed JSON"),
    ('{"label": "a"}', r"x\.txt:2: missing field 'text'"),
    ('{"text": "ok"}', r"x\.txt:2: missing field 'label'"),
    ('{"text": "   ", "label": "a"}', r"x\.txt:2: empty text"),
    ('["text", "label"]', r"x\.txt:2: expected a JSON object"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "x.txt"
    path.write_text(json.dumps({"text": "fine", "label": "a"}) + "\n" + line + "\n")
    with pytest.raises(UserError, match=message):
        read_split(path)


def test_label_unseen_in_train_is_an_error(tmp_path):
    folder = write_toy_dataset(tmp_path)
    write_jsonl(folder / "test.txt", [{"text": "a bird sings", "label": "bird"}])
    with pytest.raises(UserError, match=r"test\.txt: label\(s\) not in train: bird"):
        load_dataset(tmp_path, "toy")


def test_missing_directories(tmp_path):
    with pytest.raises(UserError, match="data directory not found"):
        load_dataset(tmp_path / "nowhere", "toy")
    with pytest.raises(UserError, match="dataset 'toy' not found"):
        load_dataset(tmp_path, "toy")


def test_head_keeps_label_names_of_the_whole_train_file(tmp_path):
    write_toy_dataset(tmp_path)
    ds = load_dataset(tmp_path, "toy").head(1)
    assert len(ds.splits["train"].texts) == 1 and ds.label_names == ["cat", "dog"]
