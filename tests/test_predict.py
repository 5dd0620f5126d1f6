"""Saved models applied to new data files by ``python -m recycling.predict``, for every task."""

import json

import pytest

from recycling import predict, runner
from recycling.errors import UserError
from tests import faults
from tests.helpers import save_tiny_bert, write_toy_dataset, write_toy_ner, write_toy_squad
from tests.test_run_experiment import ROOT

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TASKS = {  # task: (data writer, its test file, settings)
    "text_classification": (lambda d: write_toy_dataset(d), "test.txt", ""),
    "ner": (lambda d: write_toy_ner(d, long_words=40), "test.txt", "max_length: 24\nwindow_stride: 4\n"),
    "qa": (lambda d: write_toy_squad(d / "qa" / "toy"), "dev-v1.1.json",
           "max_length: 48\nwindow_stride: 16\ndev_fraction: 0.34\n"),
}


def train_and_save(tmp_path, task, modes="[semi_frozen, full]", settings=""):
    model = save_tiny_bert(tmp_path / "model")
    writer, _, extra = TASKS[task]
    writer(tmp_path / "data")
    config = tmp_path / "exp.yaml"
    max_length = "" if "max_length" in extra else "max_length: 24\n"
    config.write_text(
        f"base: {ROOT / 'HyperparameterSelection' / task / 'defaults.yaml'}\n"
        f"model: {model}\ncut_layer: 2\nmax_epochs: 1\nbatch_size: 8\nwarmup_steps: 0\n{max_length}{extra}"
        f"dataset: toy\nmodes: {modes}\nlora_rank: 4\n{settings}"
        "learning_rate: {full: 1.0e-3, semi_frozen: 1.0e-3, adapters: 1.0e-3, lora: 1.0e-2, lora_full: 1.0e-2}\n")
    args = runner.parse_args("test", [str(config), "--data-dir", str(tmp_path / "data"), "--results-dir",
                                      str(tmp_path / "results"), "--cache-root", str(tmp_path / "caches"),
                                      "--checkpoint-dir", str(tmp_path / "ckpt"), "--save-models",
                                      str(tmp_path / "models")])
    out = runner.run_experiment(task, args)
    return json.loads(out.read_text()), tmp_path / "models" / task / "toy" / "exp"


def run_predict(tmp_path, model_dir, data_file, output, *extra):
    return predict.predict(predict.parse_args([str(model_dir), str(data_file), "--output", str(output),
                                               "--cache-root", str(tmp_path / "caches"), *extra]))


@pytest.mark.parametrize("task", list(TASKS))
def test_a_saved_model_predicts_a_file_as_it_scored_in_training(tmp_path, monkeypatch, task):
    monkeypatch.chdir(tmp_path)
    result, models = train_and_save(tmp_path, task)
    test_file = tmp_path / "data" / task / "toy" / TASKS[task][1]
    for mode in ("semi_frozen", "full"):
        scores = run_predict(tmp_path, models / f"{mode}-seed0", test_file, tmp_path / f"{mode}.out")
        expected = {k: v for k, v in result["runs"][mode][0]["test"].items() if k != "loss"}
        assert scores == pytest.approx(expected, abs=1e-9), mode
    # the semi_frozen prediction reused the cache the experiment built for the test split
    assert len(list((tmp_path / "caches").rglob("manifest.json"))) == 2  # the experiment's, the file's


def test_lora_from_the_cache_and_its_text_baseline_train_save_and_predict(tmp_path, monkeypatch):
    import csv

    monkeypatch.chdir(tmp_path)
    result, models = train_and_save(tmp_path, "text_classification", "[lora, lora_full]")
    runs = {mode: result["runs"][mode][0] for mode in ("lora", "lora_full")}
    # the same trainable parameters: query and value updates of layers 2 and 3 (rank 4, width 32), and the head
    assert runs["lora"]["trainable_parameters"] == runs["lora_full"]["trainable_parameters"] == \
        2 * 2 * (4 * 32 + 32 * 4) + (32 * 32 + 32) + (32 * 2 + 2)
    # the cache changes only where layer 2's input comes from (rounded to float16): the same training
    for key in ("train_loss", "dev_loss"):
        assert runs["lora"]["history"]["epochs"][0][key] == pytest.approx(
            runs["lora_full"]["history"]["epochs"][0][key], rel=1e-3)
    test_file = tmp_path / "data" / "text_classification" / "toy" / "test.txt"
    for mode, run in runs.items():
        scores = run_predict(tmp_path, models / f"{mode}-seed0", test_file, tmp_path / f"{mode}.out")
        assert scores == pytest.approx({k: v for k, v in run["test"].items() if k != "loss"}, abs=1e-9), mode
    rows = {r["mode"]: r for r in csv.DictReader(open(tmp_path / "results" / "summary.csv"))}
    assert rows["lora"]["train_speedup"] and rows["lora"]["cache_bytes"] and not rows["lora_full"]["cache_bytes"]


@pytest.mark.parametrize("codec", ["int8", "pca"])
def test_a_model_trained_on_a_compressed_cache_predicts_through_its_own_codec(tmp_path, monkeypatch, codec):
    import csv

    monkeypatch.chdir(tmp_path)
    settings = "cache_codec: int8\n" if codec == "int8" else "cache_codec: pca\ncache_codec_dim: 8\n"
    result, models = train_and_save(tmp_path, "text_classification", "[semi_frozen, full]", settings)
    assert result["cache"]["codec"] == ("int8" if codec == "int8" else "pca8-float16")
    assert (models / "semi_frozen-seed0" / "codec.safetensors").is_file()
    assert not (models / "full-seed0" / "codec.safetensors").exists()
    test_file = tmp_path / "data" / "text_classification" / "toy" / "test.txt"
    scores = run_predict(tmp_path, models / "semi_frozen-seed0", test_file, tmp_path / "p.jsonl")
    run = result["runs"]["semi_frozen"][0]
    assert scores == pytest.approx({k: v for k, v in run["test"].items() if k != "loss"}, abs=1e-9)
    # the file's cache was encoded with the saved codec (not one fitted on the file): its own folder
    given = [p for p in (tmp_path / "caches").rglob("manifest.json") if "-p" in p.parent.name.split(codec)[-1]]
    assert len(given) == 1
    rows = {r["mode"]: r for r in csv.DictReader(open(tmp_path / "results" / "summary.csv"))}
    width = 32 if codec == "int8" else 8 * 2  # bytes per token of the codes; fp16 would be 64
    assert rows["semi_frozen"]["codec"] == result["cache"]["codec"] and rows["full"]["codec"] == ""
    assert width <= float(rows["semi_frozen"]["bytes_per_token"]) < 1.5 * width + 8


def test_an_unlabelled_file_gets_the_same_predictions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, models = train_and_save(tmp_path, "text_classification", "[semi_frozen]")
    labelled = tmp_path / "data" / "text_classification" / "toy" / "test.txt"
    rows = [json.loads(line) for line in labelled.read_text().splitlines()]
    unlabelled = tmp_path / "new.txt"
    unlabelled.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows))
    run_predict(tmp_path, models / "semi_frozen-seed0", labelled, tmp_path / "a.jsonl")
    assert run_predict(tmp_path, models / "semi_frozen-seed0", unlabelled, tmp_path / "b.jsonl") == {}
    a = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [r["label"] for r in a] == [r["label"] for r in b] and [r["text"] for r in b] == [r["text"] for r in rows]
    assert set(r["label"] for r in b) <= {"cat", "dog"}


def test_a_model_trained_on_another_lower_part_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, models = train_and_save(tmp_path, "text_classification", "[semi_frozen]")
    test_file = tmp_path / "data" / "text_classification" / "toy" / "test.txt"
    save_tiny_bert(tmp_path / "model", seed=1)  # the encoder under that name has changed since training
    with pytest.raises(UserError, match="trained on the activations of another lower part") as err:
        run_predict(tmp_path, models / "semi_frozen-seed0", test_file, tmp_path / "p.jsonl")
    faults.record("saved models", "predict with a model whose encoder's lower layers changed since training",
                  str(err.value), tmp_path)
    assert not (tmp_path / "p.jsonl").exists()


def test_a_cache_of_another_lower_part_is_refused(tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    from recycling import encoders, saved

    monkeypatch.chdir(tmp_path)
    _, models = train_and_save(tmp_path, "text_classification", "[semi_frozen]")
    test_file, cache = tmp_path / "data/text_classification/toy/test.txt", tmp_path / "file-cache"
    run_predict(tmp_path, models / "semi_frozen-seed0", test_file, tmp_path / "p.jsonl", "--cache-dir", str(cache))
    # A model trained on another encoder's lower part (that encoder now under the same name) meets this cache.
    save_tiny_bert(tmp_path / "model", seed=1)
    other = encoders.load_encoder(str(tmp_path / "model"))[0]
    info_file = models / "semi_frozen-seed0" / "model.json"
    info = json.loads(info_file.read_text())
    info["lower_weights_sha256"] = encoders.fingerprint_weights(encoders.lower_part(other, 2))
    info_file.write_text(json.dumps(info))
    weights = info_file.with_name(saved.WEIGHTS)  # re-signed, as saving that model would have
    save_file(load_file(weights), weights, metadata={saved.INFO_SHA256: saved._info_sha256(info)})
    with pytest.raises(UserError, match="built for different inputs \\(lower_weights_sha256") as err:
        run_predict(tmp_path, models / "semi_frozen-seed0", test_file, tmp_path / "q.jsonl", "--cache-dir", str(cache))
    faults.record("saved models", "predict reading (`--cache-dir`) a cache built by another lower part than "
                  "the model's", str(err.value), tmp_path)
    assert not (tmp_path / "q.jsonl").exists()


@pytest.mark.parametrize("damage,fault", [
    (lambda d: (d / "model.json").write_text("{"), "its model.json truncated"),
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100]),
     "its weights truncated"),
    (lambda d: (d / "model.safetensors").unlink(), "its weights deleted"),
])
def test_a_damaged_saved_model_is_a_clear_error(tmp_path, monkeypatch, damage, fault):
    monkeypatch.chdir(tmp_path)
    _, models = train_and_save(tmp_path, "text_classification", "[semi_frozen]")
    damage(models / "semi_frozen-seed0")
    with pytest.raises(UserError) as err:
        run_predict(tmp_path, models / "semi_frozen-seed0", tmp_path / "data/text_classification/toy/test.txt",
                    tmp_path / "p.jsonl")
    faults.record("saved models", f"predict with a saved model with {fault}", str(err.value), tmp_path)


def test_predict_never_overwrites_its_input_or_its_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, models = train_and_save(tmp_path, "text_classification", "[semi_frozen]")
    data = tmp_path / "data/text_classification/toy/test.txt"
    before = data.read_text()
    for output, what in ((data, "the data file"), (models / "semi_frozen-seed0" / "model.json", "the model")):
        with pytest.raises(UserError, match="would overwrite") as err:
            run_predict(tmp_path, models / "semi_frozen-seed0", data, output)
        faults.record("saved models", f"predict with `--output` naming {what}", str(err.value), tmp_path)
    assert data.read_text() == before


def test_a_qa_evaluation_of_a_model_of_another_task_is_refused(tmp_path, monkeypatch):
    import run_squad

    monkeypatch.chdir(tmp_path)
    _, models = train_and_save(tmp_path, "ner", "[full]")
    write_toy_squad(tmp_path / "squad")
    with pytest.raises(UserError, match="is a ner model, not a qa model") as err:
        run_squad.run(run_squad.parse_args(["--eval-only", "--load", str(models / "full-seed0"), "--eval-file",
                                            str(tmp_path / "squad" / "dev-v1.1.json"), "--output-dir",
                                            str(tmp_path / "out")]))
    faults.record("saved models", "`run_squad.py --eval-only` given an NER model", str(err.value), tmp_path)


def test_a_saved_model_of_another_format_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, models = train_and_save(tmp_path, "text_classification", "[semi_frozen]")
    info_file = models / "semi_frozen-seed0" / "model.json"
    for change, fault in (({"format": 99}, "a model.json of another format"),
                          ({"data": {"label_names": ["cat", "cat"]}}, "a model.json naming a label twice")):
        info = json.loads(info_file.read_text())
        info_file.write_text(json.dumps({**info, **change}))
        with pytest.raises(UserError) as err:
            run_predict(tmp_path, models / "semi_frozen-seed0", tmp_path / "data/text_classification/toy/test.txt",
                        tmp_path / "p.jsonl")
        faults.record("saved models", f"predict with {fault}", str(err.value), tmp_path)
        info_file.write_text(json.dumps(info))


def test_an_edited_model_json_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, models = train_and_save(tmp_path, "text_classification", "[semi_frozen]")
    info_file = models / "semi_frozen-seed0" / "model.json"
    info = json.loads(info_file.read_text())
    info["config"]["pooling"] = "mean"  # same shapes: only the hash can tell
    info_file.write_text(json.dumps(info))
    with pytest.raises(UserError, match="not the info these weights were saved with") as err:
        run_predict(tmp_path, models / "semi_frozen-seed0", tmp_path / "data/text_classification/toy/test.txt",
                    tmp_path / "p.jsonl")
    faults.record("saved models", "predict with a model.json edited by hand (pooling changed to mean)",
                  str(err.value), tmp_path)
