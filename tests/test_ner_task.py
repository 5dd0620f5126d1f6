"""NER features, windows and decoding on a tiny tokenizer; the NER script end to end."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recycling.config import ExperimentConfig
from recycling.encoders import load_encoder
from recycling.errors import UserError
from recycling.heads import IGNORE
from ner.data import load_dataset, read_conll
from ner.task import NerTask, special_layout, windows
from tests.helpers import save_tiny_bert, write_conll, write_toy_ner

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_encoder(str(save_tiny_bert(tmp_path_factory.mktemp("model"))))[1]


def config(**kw):
    return ExperimentConfig(dataset="toy", model="m", cut_layer=2, task="ner", metric="entity_f1", **kw)


@pytest.mark.parametrize("lengths,budget,stride", [([1] * 10, 4, 1), ([3, 1, 2, 4, 1, 1, 2], 5, 2),
                                                   ([2] * 7, 6, 0), ([1, 5, 1, 5, 1], 5, 4)])
def test_windows_cover_every_word_within_the_budget_and_overlap_by_about_the_stride(lengths, budget, stride):
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    ends = [s + n for s, n in zip(starts, lengths)]
    spans = windows(starts, ends, budget, stride)
    assert spans[0][0] == 0 and spans[-1][1] == len(lengths)
    for (a, b), (c, d) in zip(spans, spans[1:]):
        assert a < c <= b  # progress, and no word skipped
        shared = ends[b - 1] - starts[c] if c < b else 0
        assert shared <= stride or c == a + 1  # at most the stride (or one word when words are long)
    for a, b in spans:
        assert ends[b - 1] - starts[a] <= budget or b == a + 1


def test_first_sub_token_of_each_word_carries_its_label(tokenizer, tmp_path):
    write_conll(tmp_path / "ner/t/train.txt", [[("cats", "B-Animal"), ("purr", "O")]])
    for split in ("dev", "test"):
        write_conll(tmp_path / f"ner/t/{split}.txt", [[("owl", "B-Animal")]])
    data = load_dataset(tmp_path, "t")
    features = NerTask().features(data, "train", tokenizer, config())
    ids, labels = features.input_ids[0], features.targets["labels"][0]
    # [CLS] c ##a ##t ##s p ##u ##r ##r [SEP] with the character-level tiny vocabulary
    assert len(ids) == 10 and tokenizer.convert_ids_to_tokens(ids[:2]) == ["[CLS]", "c"]
    b, o = data.tag_names.index("B-Animal"), data.tag_names.index("O")
    assert labels == [IGNORE, b, IGNORE, IGNORE, IGNORE, o, IGNORE, IGNORE, IGNORE, IGNORE]
    assert special_layout(tokenizer) == (1, 1)


def test_long_sentences_become_windows_and_predictions_stitch_back(tokenizer, tmp_path):
    write_toy_ner(tmp_path, long_words=60)  # "word" is 4 tokens: about 250 tokens in all
    data = load_dataset(tmp_path, "toy")
    task, cfg = NerTask(), config(max_length=48, window_stride=12)
    features = task.features(data, "test", tokenizer, cfg)
    assert len(features) > len(data.splits["test"].sentences)  # the long sentence became windows
    assert max(len(ids) for ids in features.input_ids) <= 48
    # Outputs that point at the gold tag of every labelled token decode back to the gold tags.
    outputs = []
    for labels in features.targets["labels"]:
        logits = torch.zeros(len(labels), len(data.tag_names))
        for pos, tag in enumerate(labels):
            if tag != IGNORE:
                logits[pos, tag] = 1.0
        outputs.append(logits)
    gold = [s.tags for s in data.splits["test"].sentences]
    assert task.predict(data, "test", features, outputs) == gold
    assert task.score(data, "test", features, outputs)["entity_f1"] == 1.0


def test_each_word_is_read_from_the_window_where_it_is_most_central(tokenizer, tmp_path):
    words = [("ab", "O")] * 30  # 2 tokens each
    write_conll(tmp_path / "ner/t/train.txt", [words, [("x", "B-Animal")]])
    for split in ("dev", "test"):
        write_conll(tmp_path / f"ner/t/{split}.txt", [words])
    data = load_dataset(tmp_path, "t")
    task = NerTask()
    features = task.features(data, "test", tokenizer, config(max_length=22, window_stride=8))  # 10 words a window
    spans = windows([2 * i for i in range(30)], [2 * i + 2 for i in range(30)], 20, 8)
    assert len(features) == len(spans) >= 3
    slots = features.meta
    for w in range(30):
        margins = {f: min(2 * (w - a), 2 * (b - w) - 1) for f, (a, b) in enumerate(spans) if a <= w < b}
        chosen = slots.feature[0][w]
        assert margins[chosen] == max(margins.values())
        assert slots.position[0][w] == 1 + 2 * (w - spans[chosen][0])  # after [CLS]
    # each window votes for another tag: every word takes the vote of its most central window
    outputs = [torch.zeros(len(ids), len(data.tag_names)) for ids in features.input_ids]
    for f, out in enumerate(outputs):
        out[:, f % len(data.tag_names)] = 1.0
    predicted = task.predict(data, "test", features, outputs)[0]
    assert predicted == [data.tag_names[f % len(data.tag_names)] for f in slots.feature[0]]
    assert len(set(slots.feature[0])) == len(spans)  # every window serves some words


@pytest.fixture
def ner_setup(tmp_path):
    model = save_tiny_bert(tmp_path / "model")
    write_toy_ner(tmp_path / "data", long_words=40)
    config = tmp_path / "exp" / "toy_ner.yaml"
    config.parent.mkdir()
    config.write_text(
        f"base: {ROOT / 'HyperparameterSelection/ner/defaults.yaml'}\n"
        f"model: {model}\ncut_layer: 2\ndataset: toy\nmax_epochs: 2\nbatch_size: 8\nwarmup_ratio: 0.1\n"
        "max_length: 48\nwindow_stride: 12\nadapter_size: 8\nselect_on: dev_metric\n"
        "learning_rate: {full: 1.0e-3, semi_frozen: 1.0e-3, adapters: 1.0e-3, adapters_full: 1.0e-3}\n")
    return tmp_path, config


def run_ner(tmp_path, config, *extra):
    cmd = [sys.executable, str(ROOT / "NER_Scripts" / "run_experiment.py"), str(config),
           "--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path / "results"),
           "--cache-root", str(tmp_path / "caches"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)


def test_ner_script_runs_every_mode_end_to_end(ner_setup):
    tmp_path, config = ner_setup
    proc = run_ner(tmp_path, config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 sentences are longer than max_length=48" in proc.stderr
    result = json.loads((tmp_path / "results/ner/toy/exp__toy_ner.json").read_text())
    assert result["label_names"] == ["O", "B-Animal", "I-Animal"] and result["examples"]["train"] == 25
    for mode in ("full", "semi_frozen", "adapters", "adapters_full"):
        (run,) = result["runs"][mode]
        for split in ("dev", "test"):
            assert set(run[split]) >= {"entity_f1", "entity_precision", "entity_recall", "token_micro_f1",
                                       "token_macro_f1", "loss"}
        assert all("dev_score" in e for e in run["history"]["epochs"])  # selection on dev entity F1
        assert run["history"]["warmup_steps"] == 1  # 10% of 2 epochs x 4 steps, rounded up
    # the cache holds one row per window token: more rows than the test sentences' tokens unwindowed
    manifest = json.loads(next((tmp_path / "caches/ner/toy").glob("*/manifest.json")).read_text())
    assert manifest["fingerprint"]["features"]["test"] > 9
    rows = {r["mode"]: r for r in csv.DictReader(open(tmp_path / "results/summary.csv"))}
    assert rows["semi_frozen"]["metric"] == "entity_f1" and rows["semi_frozen"]["task"] == "ner"
    assert rows["semi_frozen"]["train_speedup"] and rows["adapters"]["infer_speedup"]

    built = subprocess.run([sys.executable, "-m", "cache_builder", str(config), "--data-dir", str(tmp_path / "data"),
                            "--cache-root", str(tmp_path / "caches")], capture_output=True, text=True, cwd=tmp_path)
    assert built.returncode == 0 and "reusing cache" in built.stderr  # the CLI finds the runner's cache


def test_ner_bad_input_is_one_line_naming_file_and_line(ner_setup):
    tmp_path, config = ner_setup
    dev = tmp_path / "data/ner/toy/dev.txt"
    dev.write_text(dev.read_text().replace("B-Animal", "B-Plant", 1))
    proc = run_ner(tmp_path, config)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert "dev.txt:4: tag 'B-Plant' not in train" in line
    assert not (tmp_path / "results").exists() and not (tmp_path / "caches").exists()


# ---- a file to predict on (NerTask.load_file / labelled / write_predictions)

def write_words_only(path: Path, sentences: list[list[tuple[str, str]]]) -> Path:
    """The same sentences as ``write_conll`` writes, one column (the word) per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join("\n".join(w for w, _ in sentence) for sentence in sentences) + "\n")
    return path


def test_unlabelled_conll_gives_the_same_features_and_predictions_round_trip(tokenizer, tmp_path):
    long_sentence = [("cat", "B-Animal") if i % 5 == 0 else ("word", "O") for i in range(30)]
    sentences = [[("the", "O"), ("big", "O"), ("cat", "B-Animal"), ("cats", "I-Animal")], long_sentence]
    task, cfg = NerTask(), config(max_length=24, window_stride=6)  # the long sentence takes several windows
    saved = {"label_names": ["O", "B-Animal", "I-Animal"], "examples": {"train": 25}}
    labelled = task.load_file(write_conll(tmp_path / "l.txt", sentences), cfg, saved)
    bare = task.load_file(write_words_only(tmp_path / "u.txt", sentences), cfg, saved)
    assert task.labelled(labelled, "predict") and not task.labelled(bare, "predict")
    assert bare.tag_names == labelled.tag_names == saved["label_names"]
    with_tags, without = (task.features(d, "predict", tokenizer, cfg) for d in (labelled, bare))
    assert len(with_tags) > len(sentences) and with_tags.input_ids == without.input_ids
    assert any(t != IGNORE for labels in with_tags.targets["labels"] for t in labels)
    assert all(t == IGNORE for labels in without.targets["labels"] for t in labels)  # placeholders: no target

    torch.manual_seed(0)
    outputs = [torch.randn(len(ids), 3) for ids in without.input_ids]
    predicted = task.predict(bare, "predict", without, outputs)
    assert predicted == task.predict(labelled, "predict", with_tags, outputs)
    assert [len(p) for p in predicted] == [len(s) for s in sentences]
    assert 0 <= task.score(labelled, "predict", with_tags, outputs)["entity_f1"] <= 1
    with pytest.raises(UserError, match="not every word has a tag"):
        task.score(bare, "predict", without, outputs)

    out = tmp_path / "out" / "predicted.conll"
    task.write_predictions(bare, "predict", predicted, out)
    assert out.read_text().startswith("the\t")
    back = read_conll(out, require_tags=False)
    assert [s.words for s in back.sentences] == [[w for w, _ in s] for s in sentences]
    # random logits can give I- after O, which reading normalizes; written tags are the predictions
    assert [line.split("\t")[1] for line in out.read_text().splitlines() if line] == [t for p in predicted for t in p]
    assert sorted(p.name for p in out.parent.iterdir()) == ["predicted.conll"]


def test_a_tag_outside_the_saved_set_is_one_line(tmp_path):
    path = write_conll(tmp_path / "x.txt", [[("owl", "B-Bird")]])
    with pytest.raises(UserError) as err:
        NerTask().load_file(path, config(), {"label_names": ["O", "B-Animal", "I-Animal"]})
    assert str(err.value) == (f"{path}:3: tag 'B-Bird' is not one the model was trained on "
                              "(it knows: O, B-Animal, I-Animal)")
