"""The text-classification script end to end, on a tiny random BERT and a toy dataset."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from recycling.results import mean_seconds, rebuild_summary
from tests.helpers import save_tiny_bert, write_jsonl, write_toy_dataset

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "TextClassificationScripts" / "run_experiment.py"


@pytest.fixture
def setup(tmp_path):
    model = save_tiny_bert(tmp_path / "model")
    write_toy_dataset(tmp_path / "data")
    config = tmp_path / "exp" / "toy_tiny.yaml"
    config.parent.mkdir()
    (config.parent / "base.yaml").write_text(
        f"base: {ROOT / 'HyperparameterSelection/text_classification/defaults.yaml'}\n"
        f"model: {model}\ncut_layer: 2\nmax_epochs: 2\nbatch_size: 8\nwarmup_steps: 0\nmax_length: 24\n")
    config.write_text("base: base.yaml\ndataset: toy\nseeds: [0, 1]\nadapter_size: 8\n"
                      "learning_rate: {full: 1.0e-3, semi_frozen: 1.0e-3, adapters: 1.0e-3, adapters_full: 1.0e-3}\n")
    return tmp_path, config


def run(tmp_path, config, *extra):
    cmd = [sys.executable, str(SCRIPT), str(config), "--data-dir", str(tmp_path / "data"),
           "--results-dir", str(tmp_path / "results"), "--cache-root", str(tmp_path / "caches"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)


def test_every_mode_and_seed_end_to_end(setup):
    tmp_path, config = setup
    proc = run(tmp_path, config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "results/text_classification/toy/exp__toy_tiny.json").read_text())
    assert result["complete"]
    assert set(result["runs"]) == {"full", "semi_frozen", "adapters", "adapters_full"}
    for mode, runs in result["runs"].items():
        assert [r["seed"] for r in runs] == [0, 1]
        for r in runs:
            assert 0 <= r["test"]["micro_f1"] <= 1 and 0 <= r["dev"]["macro_f1"] <= 1
            assert len(r["history"]["epochs"]) >= 1 and r["inference_seconds"] > 0
    trainable = {m: runs[0]["trainable_parameters"] for m, runs in result["runs"].items()}
    assert trainable["full"] > trainable["semi_frozen"] > trainable["adapters"] == trainable["adapters_full"]
    prov = result["provenance"]
    assert prov["config"]["cut_layer"] == 2 and prov["seeds"] == [0, 1]
    assert prov["config_sources"]["cut_layer"].endswith("base.yaml")
    assert prov["config_sources"]["weight_decay"] == "HyperparameterSelection/text_classification/defaults.yaml"
    assert prov["packages"]["torch"] and prov["git_sha"] and prov["device"].startswith("cpu")
    assert all(r["device"].startswith("cpu") and r["git_sha"] for runs in result["runs"].values() for r in runs)
    assert result["cache"]["bytes"] > 0 and result["cache"]["build_seconds"] >= 0

    rows = list(csv.DictReader(open(tmp_path / "results/summary.csv")))
    assert [r["mode"] for r in rows] == ["full", "semi_frozen", "adapters", "adapters_full"]
    by_mode = {r["mode"]: r for r in rows}
    assert by_mode["semi_frozen"]["train_speedup"] and by_mode["adapters"]["infer_speedup"]
    assert by_mode["full"]["train_speedup"] == "" and by_mode["full"]["cache_bytes"] == ""
    assert by_mode["semi_frozen"]["n_seeds"] == "2" and by_mode["semi_frozen"]["test_std"] != ""
    assert (tmp_path / "results/summary.md").read_text().count("\n") == 2 + 4

    # Rerunning with one more seed reuses the cache and the finished runs.
    again = run(tmp_path, config, "--set", "seeds=[0,1,2]", "--set", "modes=[semi_frozen]")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing cache" in again.stderr
    result = json.loads((tmp_path / "results/text_classification/toy/exp__toy_tiny.json").read_text())
    assert [r["seed"] for r in result["runs"]["semi_frozen"]] == [0, 1, 2]
    assert [r["seed"] for r in result["runs"]["full"]] == [0, 1]  # other modes' runs are kept
    assert result["provenance"]["seeds"] == [0, 1, 2]

    # A rerun that needs no cache (only text modes, all done) keeps the cache's record.
    third = run(tmp_path, config, "--set", "modes=[full]", "--set", "seeds=[0]")
    assert third.returncode == 0, third.stderr[-3000:]
    result = json.loads((tmp_path / "results/text_classification/toy/exp__toy_tiny.json").read_text())
    assert result["cache"]["bytes"] > 0 and len(result["runs"]["adapters"]) == 2
    rows = {r["mode"]: r for r in csv.DictReader(open(tmp_path / "results/summary.csv"))}
    assert rows["semi_frozen"]["cache_bytes"] and rows["semi_frozen"]["n_seeds"] == "3"


@pytest.mark.parametrize("case,message", [
    ("bad_json", "train.txt:3: malformed JSON"),
    ("missing_label", "train.txt:1: missing field 'label'"),
    ("unseen_label", "label(s) not in train: bird"),
    ("empty_text", "train.txt:2: empty text"),
    ("no_data_dir", "data directory not found"),
    ("unknown_model", "cannot load model"),
    ("unknown_key", "unknown key 'lerning_rate'"),
])
def test_bad_input_gives_one_line_and_writes_nothing(setup, case, message):
    tmp_path, config = setup
    folder = tmp_path / "data" / "text_classification" / "toy"
    extra = []
    if case == "bad_json":
        good = (folder / "train.txt").read_text().splitlines(keepends=True)[:2]
        (folder / "train.txt").write_text("".join(good) + '{"text": \n')
    elif case == "missing_label":
        write_jsonl(folder / "train.txt", [{"text": "x"}])
    elif case == "unseen_label":
        write_jsonl(folder / "dev.txt", [{"text": "a bird", "label": "bird"}])
    elif case == "empty_text":
        write_jsonl(folder / "train.txt", [{"text": "a", "label": "cat"}, {"text": "", "label": "dog"}])
    elif case == "no_data_dir":
        extra = ["--data-dir", str(tmp_path / "missing")]
    elif case == "unknown_model":
        extra = ["--set", f"model={tmp_path / 'no-such-model'}"]
    elif case == "unknown_key":
        extra = ["--set", "lerning_rate=1"]
    proc = run(tmp_path, config, *extra)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")] == \
        [proc.stderr.strip().splitlines()[-1]]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "caches").exists()


def test_long_texts_are_truncated_with_one_warning(setup):
    tmp_path, config = setup
    folder = tmp_path / "data" / "text_classification" / "toy"
    rows = [json.loads(line) for line in (folder / "train.txt").read_text().splitlines()]
    rows[0]["text"] = "cats purr " * 40
    rows[1]["text"] = "dogs bark " * 40
    write_jsonl(folder / "train.txt", rows)
    proc = run(tmp_path, config, "--set", "modes=[semi_frozen]", "--set", "seeds=[0]", "--set", "max_epochs=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line and "truncated" in line]
    assert len(warnings) == 1 and "2 texts are longer than max_length=24" in warnings[0]


def _result(tmp_path):
    return json.loads((tmp_path / "results/text_classification/toy/exp__toy_tiny.json").read_text())


def test_resume_ignores_added_fields_and_moves_incomparable_files_aside(setup):
    tmp_path, config = setup
    assert run(tmp_path, config, "--set", "modes=[semi_frozen]", "--set", "seeds=[0]").returncode == 0
    out = tmp_path / "results/text_classification/toy/exp__toy_tiny.json"
    # A file written before a config key existed: the key's default means what the old code did.
    old = json.loads(out.read_text())
    del old["provenance"]["config"]["pooling"], old["provenance"]["config"]["select_on"]
    out.write_text(json.dumps(old))
    again = run(tmp_path, config, "--set", "modes=[semi_frozen]", "--set", "seeds=[0]", "--set", "eval_batch_size=3")
    assert again.returncode == 0 and "already in" in again.stderr and "moved" not in again.stderr
    # Another pooling computes something else: the old runs are kept beside, never deleted.
    third = run(tmp_path, config, "--set", "modes=[semi_frozen]", "--set", "seeds=[0]", "--set", "pooling=mean")
    assert third.returncode == 0, third.stderr[-2000:]
    assert "other pooling: moved to exp__toy_tiny.json.replaced-" in third.stderr
    aside = list(out.parent.glob("exp__toy_tiny.json.replaced-*"))
    assert len(aside) == 1 and json.loads(aside[0].read_text())["runs"]["semi_frozen"][0]["seed"] == 0
    assert _result(tmp_path)["provenance"]["config"]["pooling"] == "mean"
    rows = list(csv.DictReader(open(tmp_path / "results/summary.csv")))
    assert len(rows) == 1  # the file moved aside is not in the summary


def test_summary_pairs_speedups_only_within_one_device(setup):
    tmp_path, config = setup
    assert run(tmp_path, config, "--set", "modes=[full,semi_frozen]", "--set", "seeds=[0,1]").returncode == 0
    out = tmp_path / "results/text_classification/toy/exp__toy_tiny.json"
    result = json.loads(out.read_text())
    result["runs"]["semi_frozen"][1]["device"] = "other machine"
    out.write_text(json.dumps(result))
    rows = {(r["mode"], r["device"]): r for r in rebuild_summary(tmp_path / "results")}
    cpu = result["runs"]["full"][0]["device"]
    assert set(rows) == {("full", cpu), ("semi_frozen", cpu), ("semi_frozen", "other machine")}
    assert rows["semi_frozen", cpu]["train_speedup"] != "" and rows["semi_frozen", cpu]["n_seeds"] == 1
    assert rows["semi_frozen", "other machine"]["train_speedup"] == ""


def test_summary_speedups_pair_only_the_seeds_both_modes_ran(setup):
    tmp_path, config = setup
    assert run(tmp_path, config, "--set", "modes=[full,semi_frozen]", "--set", "seeds=[0]").returncode == 0
    assert run(tmp_path, config, "--set", "modes=[semi_frozen]", "--set", "seeds=[1]").returncode == 0
    out = tmp_path / "results/text_classification/toy/exp__toy_tiny.json"
    result = json.loads(out.read_text())
    # Seed 1 alone, as if a later session had run on a machine ten times faster.
    seed1 = result["runs"]["semi_frozen"][1]
    assert seed1["seed"] == 1
    for epoch in seed1["history"]["epochs"]:
        epoch["train_seconds"] /= 10
    seed1["inference_seconds"] /= 10
    out.write_text(json.dumps(result))
    rows = {r["mode"]: r for r in rebuild_summary(tmp_path / "results")}
    assert rows["semi_frozen"]["n_seeds"] == 2
    full_s, full_infer = mean_seconds(result["runs"]["full"])
    seed0_s, seed0_infer = mean_seconds(result["runs"]["semi_frozen"][:1])
    assert rows["semi_frozen"]["train_speedup"] == round(full_s / seed0_s, 2)
    assert rows["semi_frozen"]["infer_speedup"] == round(full_infer / seed0_infer, 2)
    # Without a seed in common there is no speedup to report.
    result["runs"]["semi_frozen"] = [seed1]
    out.write_text(json.dumps(result))
    rows = {r["mode"]: r for r in rebuild_summary(tmp_path / "results")}
    assert rows["semi_frozen"]["train_speedup"] == "" and rows["semi_frozen"]["infer_speedup"] == ""


def test_a_new_text_field_gets_a_new_cache_not_stale_labels(setup):
    tmp_path, config = setup
    folder = tmp_path / "data" / "text_classification" / "toy"
    for split in ("train", "dev", "test"):
        rows = [json.loads(line) for line in (folder / f"{split}.txt").read_text().splitlines()]
        write_jsonl(folder / f"{split}.txt", [{**r, "title": " ".join(reversed(r["text"].split()))} for r in rows])
    args = ("--set", "modes=[semi_frozen]", "--set", "seeds=[0]", "--set", "max_epochs=1")
    assert run(tmp_path, config, *args).returncode == 0
    assert run(tmp_path, config, *args, "--set", "text_field=title").returncode == 0
    caches = sorted(p.name for p in (tmp_path / "caches/text_classification/toy").iterdir() if p.is_dir())
    assert len(caches) == 2 and all("-k2-float16-" in name for name in caches)


def test_a_file_of_another_task_is_refused(setup):
    tmp_path, config = setup
    proc = subprocess.run([sys.executable, str(ROOT / "NER_Scripts" / "run_experiment.py"), str(config),
                           "--data-dir", str(tmp_path / "data")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "task 'text_classification' does not match this script's task 'ner'" in proc.stderr


def test_experiment_names_do_not_collide_across_folders(tmp_path, monkeypatch):
    from recycling.runner import experiment_name

    hp = ROOT / "HyperparameterSelection"
    assert experiment_name(hp / "text_classification" / "minilm_l6_chemprot.yaml", "text_classification") == \
        "minilm_l6_chemprot"  # the names of the committed results
    monkeypatch.chdir(tmp_path)
    a = experiment_name(tmp_path / "sweep_a" / "exp.yaml", "ner")
    b = experiment_name(tmp_path / "sweep_b" / "exp.yaml", "ner")
    assert (a, b) == ("sweep_a__exp", "sweep_b__exp")


def test_pooling_defaults_to_first_token_except_for_t5():
    from tests.tiny_models import tiny_model
    from text_classification.task import default_pooling

    assert default_pooling(tiny_model("bert")) == "cls" and default_pooling(tiny_model("t5")) == "mean"


def test_a_file_without_a_key_whose_default_changed_counts_its_old_value():
    from recycling.runner import computation_differs

    old = {"dataset": "toy"}  # written before length_group_batches existed: transformers' grouping
    assert computation_differs(old, {"dataset": "toy", "length_group_batches": None}, ["full"]) == []
    assert computation_differs(old, {"dataset": "toy", "length_group_batches": 50}, ["full"]) == \
        ["length_group_batches"]


def test_only_settings_the_earlier_runs_read_make_a_result_file_differ():
    from recycling.runner import computation_differs

    old = {"cut_layer": 3, "adapter_size": 64, "learning_rate": {"full": 1e-4, "semi_frozen": 1e-4}}
    new = {"cut_layer": 4, "adapter_size": 256, "lora_rank": 4,
           "learning_rate": {"full": 1e-4, "semi_frozen": 5e-4, "lora": 1e-3}}
    assert computation_differs(old, new, ["full"]) == []  # full reads none of what changed
    assert computation_differs(old, new, ["full", "semi_frozen"]) == ["cut_layer", "learning_rate"]
    assert computation_differs(old, new, ["adapters"]) == ["adapter_size", "cut_layer"]  # no rate either side
    assert computation_differs(old, new, ["lora", "lora_full"]) == ["cut_layer", "learning_rate", "lora_rank"]
