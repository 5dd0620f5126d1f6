"""QA features, span decoding, the QA experiment script and run_squad.py on a tiny model."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from qa.data import read_squad
from qa.task import QaTask, answer_positions, best_span
from recycling.config import ExperimentConfig
from recycling.encoders import load_encoder
from recycling.errors import UserError
from tests.helpers import save_tiny_bert, write_squad, write_toy_squad

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_encoder(str(save_tiny_bert(tmp_path_factory.mktemp("model"))))[1]


def config(**kw):
    kw = {"max_length": 48, "window_stride": 16, **kw}
    return ExperimentConfig(dataset="toy", model="m", cut_layer=2, task="qa", metric="f1", **kw)


@pytest.fixture
def data(tmp_path):
    from qa.data import QaDataset

    # Answers at the start, in the middle and at the end of long contexts: several windows each,
    # answers near window boundaries, and windows without the answer.
    context = "alpha beta gamma delta " * 6 + "the key is zeta. " + "eta theta iota kappa " * 6 + "end omega"
    path = write_squad(tmp_path / "t.json", [[(context, [("first word?", "alpha"), ("what is key?", "zeta"),
                                                          ("last word?", "omega"), ("two words?", "iota kappa")])]])
    split = read_squad(path)
    return QaDataset("t", {"test": split}, dev_held_out=False)


def test_features_map_answers_to_tokens_and_back_to_the_exact_text(tokenizer, data):
    features = QaTask().features(data, "test", tokenizer, config())
    meta = features.meta
    assert len(features) > 4 * 2  # several windows per question
    assert max(len(ids) for ids in features.input_ids) <= 48
    assert features.token_type_ids is not None  # BERT tells question and context apart
    found = set()
    for f, (s, e) in enumerate(zip(features.targets["start_positions"], features.targets["end_positions"])):
        example = data.splits["test"].examples[meta.example[f]]
        if (s, e) == (0, 0):  # this window does not hold the whole answer
            continue
        assert example.context[meta.offsets[f][s, 0]:meta.offsets[f][e, 1]] == example.answers[0]
        found.add(example.id)
    assert found == {e.id for e in data.splits["test"].examples}
    # consecutive windows of one question share `window_stride` tokens of context
    first = [f for f in range(len(features)) if meta.example[f] == 0]
    a, b = (features.input_ids[f] for f in first[:2])
    assert a[-17:-1] == b[b.index(tokenizer.sep_token_id) + 1:][:16]


def test_decoding_returns_the_gold_span_when_the_logits_point_at_it(tokenizer, data):
    task = QaTask()
    features = task.features(data, "test", tokenizer, config())
    outputs = []
    for ids, s, e in zip(features.input_ids, features.targets["start_positions"], features.targets["end_positions"]):
        logits = torch.zeros(len(ids), 2)
        if (s, e) != (0, 0):
            logits[s, 0] = logits[e, 1] = 5.0
        outputs.append(logits)
    predictions = task.predict(data, "test", features, outputs)
    assert predictions == {e.id: e.answers[0] for e in data.splits["test"].examples}
    assert task.score(data, "test", features, outputs) == {"exact_match": 1.0, "f1": 1.0}


def test_decoding_respects_the_length_limit_and_the_context():
    offsets = np.array([(-1, -1), (-1, -1), (0, 1), (2, 3), (4, 5), (6, 7), (-1, -1)])  # [CLS] q [ctx x4] [SEP]
    logits = torch.zeros(7, 2)
    logits[0, 0] = logits[0, 1] = 50.0  # the first token is not context
    logits[2, 0], logits[3, 0], logits[4, 1], logits[5, 1] = 9.0, 6.0, 5.0, 6.0
    assert best_span(logits, offsets, n_best=7, max_answer_length=4)[1:] == (2, 5)  # 15
    assert best_span(logits, offsets, n_best=7, max_answer_length=3)[1:] == (2, 4)  # 14 beats (3, 5): 12
    assert best_span(logits, offsets, n_best=7, max_answer_length=2)[1:] == (3, 4)  # 11 beats (2, 3): 9
    logits[5, 0] = 20.0  # a start after every good end is never paired with it
    assert best_span(logits, offsets, n_best=7, max_answer_length=4)[1:] == (5, 5)
    assert best_span(torch.zeros(3, 2), np.full((3, 2), -1), 3, 30) is None


def test_answer_positions_in_and_out_of_the_window():
    offsets = [None, None, (10, 14), (15, 19), (20, 24), None]
    assert answer_positions(offsets, 15, 24) == (3, 4)
    assert answer_positions(offsets, 16, 18) == (3, 3)  # inside one token
    assert answer_positions(offsets, 5, 12) == (0, 0)  # starts before the window
    assert answer_positions(offsets, 20, 30) == (0, 0)  # ends after it


@pytest.fixture
def squad_setup(tmp_path):
    model = save_tiny_bert(tmp_path / "model")
    write_toy_squad(tmp_path / "data" / "qa" / "toy")
    exp = tmp_path / "exp" / "toy_qa.yaml"
    exp.parent.mkdir()
    exp.write_text(f"base: {ROOT / 'HyperparameterSelection/qa/defaults.yaml'}\n"
                   f"model: {model}\ncut_layer: 2\ndataset: toy\nmax_epochs: 1\nbatch_size: 8\nmax_length: 48\n"
                   "window_stride: 16\nadapter_size: 8\ndev_fraction: 0.34\nmodes: [full, semi_frozen]\n"
                   "learning_rate: {full: 1.0e-3, semi_frozen: 1.0e-3, adapters: 1.0e-3, adapters_full: 1.0e-3}\n")
    return tmp_path, model, exp


def test_qa_experiment_script_end_to_end(squad_setup):
    tmp_path, _, exp = squad_setup
    proc = subprocess.run([sys.executable, str(ROOT / "QA_Scripts" / "run_experiment.py"), str(exp),
                           "--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path / "results"),
                           "--cache-root", str(tmp_path / "caches")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "results/qa/toy/exp__toy_qa.json").read_text())
    assert result["dev_held_out_from_train"] and result["examples"]["test"] == 12
    assert result["examples"]["train"] + result["examples"]["dev"] == 24
    for mode in ("full", "semi_frozen"):
        assert set(result["runs"][mode][0]["test"]) == {"exact_match", "f1", "loss"}


def test_run_squad_saves_a_model_that_loads_back_to_the_same_scores(squad_setup):
    tmp_path, model, _ = squad_setup
    folder = tmp_path / "data" / "qa" / "toy"
    common = [sys.executable, str(ROOT / "run_squad.py"), "--eval-file", str(folder / "dev-v1.1.json"),
              "--cache-root", str(tmp_path / "caches")]
    train = subprocess.run(common + ["--train-file", str(folder / "train-v1.1.json"), "--model", str(model),
                                     "--cut-layer", "2", "--mode", "semi_frozen", "--output-dir", str(tmp_path / "a"),
                                     "--save", "--set", "max_epochs=1", "--set", "max_length=48",
                                     "--set", "window_stride=16", "--set", "dev_fraction=0.34"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    assert (tmp_path / "a/model/model.safetensors").is_file()
    again = subprocess.run(common + ["--eval-only", "--load", str(tmp_path / "a/model"),
                                     "--output-dir", str(tmp_path / "b")], capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    first, second = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("a", "b"))
    assert first["test"] == second["test"]
    predictions = json.loads((tmp_path / "a/predictions.json").read_text())
    assert predictions == json.loads((tmp_path / "b/predictions.json").read_text())
    assert set(predictions) == {e.id for e in read_squad(folder / "dev-v1.1.json").examples}
    missing = subprocess.run(common + ["--eval-only", "--output-dir", str(tmp_path / "c")],
                             capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode == 2 and "--eval-only needs --load" in missing.stderr


# ---- a file to predict on (QaTask.load_file / labelled / write_predictions)

def test_questions_without_answers_give_the_same_features_and_predictions_round_trip(tokenizer, data, tmp_path):
    task, cfg = QaTask(), config()
    source = data.splits["test"].path
    labelled = task.load_file(source, cfg, {"examples": {"train": 4}})
    content = json.loads(source.read_text())
    for n, qa in enumerate(q for p in content["data"][0]["paragraphs"] for q in p["qas"]):
        if n % 2:
            del qa["answers"]  # no key ...
        else:
            qa["answers"] = []  # ... or an empty list
    (tmp_path / "bare.json").write_text(json.dumps(content))
    bare = task.load_file(tmp_path / "bare.json", cfg, {})
    assert task.labelled(labelled, "predict") and not task.labelled(bare, "predict")
    with_answers, without = (task.features(d, "predict", tokenizer, cfg) for d in (labelled, bare))
    assert with_answers.input_ids == without.input_ids and with_answers.token_type_ids == without.token_type_ids
    assert any(with_answers.targets["start_positions"])
    assert not any(without.targets["start_positions"]) and not any(without.targets["end_positions"])

    torch.manual_seed(0)
    outputs = [torch.randn(len(ids), 2) for ids in without.input_ids]
    predicted = task.predict(bare, "predict", without, outputs)
    assert predicted == task.predict(labelled, "predict", with_answers, outputs)
    assert 0 <= task.score(labelled, "predict", with_answers, outputs)["f1"] <= 1
    with pytest.raises(UserError, match="not every question has an answer"):
        task.score(bare, "predict", without, outputs)
    out = tmp_path / "out" / "predictions.json"
    task.write_predictions(bare, "predict", predicted, out)
    assert json.loads(out.read_text(encoding="utf-8")) == predicted
    assert list(predicted) == [e.id for e in bare.splits["predict"].examples]
    assert sorted(p.name for p in out.parent.iterdir()) == ["predictions.json"]


def test_one_question_without_answers_makes_the_file_unlabelled(tmp_path):
    path = write_squad(tmp_path / "x.json", [[("the sky is blue.", [("what colour?", "blue"), ("what?", "sky")])]])
    content = json.loads(path.read_text())
    content["data"][0]["paragraphs"][0]["qas"][1]["answers"] = []
    path.write_text(json.dumps(content))
    data = QaTask().load_file(path, config(), {})
    assert not QaTask().labelled(data, "predict") and len(data.splits["predict"].examples) == 2


def test_a_context_that_tokenizes_to_nothing_has_no_answer_window(tokenizer, tmp_path):
    # zero-width spaces are not whitespace to str.strip but give no token: the answer lies in no window
    path = write_squad(tmp_path / "x.json", [[("\u200b\u200b", [("what?", "\u200b")])]])
    data = QaTask().load_file(path, config(), {})
    features = QaTask().features(data, "predict", tokenizer, config())
    assert features.targets["start_positions"] == [0]
