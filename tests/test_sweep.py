"""Sweeps: the grid a file asks for, its checks, the choice on dev, the grid's time, and the runner
running one end to end on a tiny model."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from recycling import sweep
from recycling.config import load_config
from recycling.errors import UserError
from tests import faults
from tests.helpers import save_tiny_bert, write_toy_dataset

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = ROOT / "HyperparameterSelection/text_classification/defaults.yaml"


def _file(tmp_path, body: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(f"base: {DEFAULTS}\ndataset: toy\nmodel: m\ncut_layer: 2\nmodes: [full, semi_frozen, adapters]\n"
                    + body)
    return path


def test_points_are_the_product_in_file_order_with_rates_for_every_mode(tmp_path):
    config, sources = load_config(_file(tmp_path, "sweep:\n  learning_rate: [1.0e-4, {adapters: 1.0e-3}]\n"
                                                  "  adapter_size: [64, 256]\n"))
    grid = sweep.points(config, sources["sweep"])
    assert [p.name for p in grid] == ["learning_rate=0.0001,adapter_size=64", "learning_rate=0.0001,adapter_size=256",
                                      "learning_rate=adapters-0.001,adapter_size=64",
                                      "learning_rate=adapters-0.001,adapter_size=256"]
    assert grid[0].config.learning_rate == {"full": 1e-4, "semi_frozen": 1e-4, "adapters": 1e-4}
    # A mapping changes only the modes it names; the others keep the file's rates.
    assert grid[2].config.learning_rate == {"full": 2e-5, "semi_frozen": 2e-5, "adapters": 1e-3, "adapters_full": 1e-4}
    assert grid[3].config.adapter_size == 256 and all(p.config.sweep is None for p in grid)


def test_a_mode_runs_only_where_the_sweep_changes_a_setting_it_reads(tmp_path):
    config, sources = load_config(_file(tmp_path, "sweep: {cut_layer: [1, 2, 3]}\n"))
    grid = sweep.points(config, sources["sweep"])
    # full never reads the cut: it runs once, at the first point, the reference for every cut.
    assert [(p.name, p.config.modes) for p in grid] == [
        ("cut_layer=1", ["full", "semi_frozen", "adapters"]), ("cut_layer=2", ["semi_frozen", "adapters"]),
        ("cut_layer=3", ["semi_frozen", "adapters"])]
    assert [p.config.cut_layer for p in grid] == [1, 2, 3]
    config, sources = load_config(_file(tmp_path, "sweep: {learning_rate: [1.0e-4, {adapters: 1.0e-3}], "
                                                  "adapter_size: [64, 256]}\n"))
    # The mapping leaves full and semi_frozen at the file's 2e-5: new for them only at its first point.
    assert [(p.name, p.config.modes) for p in sweep.points(config, sources["sweep"])] == [
        ("learning_rate=0.0001,adapter_size=64", ["full", "semi_frozen", "adapters"]),
        ("learning_rate=0.0001,adapter_size=256", ["adapters"]),
        ("learning_rate=adapters-0.001,adapter_size=64", ["full", "semi_frozen", "adapters"]),
        ("learning_rate=adapters-0.001,adapter_size=256", ["adapters"])]
    # A point with nothing new to run is left out.
    path = _file(tmp_path, "sweep: {adapter_size: [64, 256]}\n")
    path.write_text(path.read_text().replace("[full, semi_frozen, adapters]", "[full, semi_frozen]"))
    config, sources = load_config(path)
    assert [p.name for p in sweep.points(config, sources["sweep"])] == ["adapter_size=64"]


@pytest.mark.parametrize("body, message", [
    ("sweep: {model: [a, b]}", "key 'sweep.model' cannot be swept (a setting; sweepable: learning_rate"),
    ("sweep: {learnig_rate: [1.0e-4]}", "key 'sweep.learnig_rate' cannot be swept (not a setting"),
    ("sweep: {adapter_size: []}", "key 'sweep.adapter_size' must list distinct values, got []"),
    ("sweep: {adapter_size: [64, 64]}", "key 'sweep.adapter_size' must list distinct values, got [64, 64]"),
    ("sweep: {adapter_size: [64, big]}", "(sweep): key 'adapter_size' must be int, got str 'big'"),
    ("sweep: {learning_rate: [1.0e-4, {fast: 1.0}]}", "key 'learning_rate' has unknown mode 'fast'"),
    ("sweep: {pooling: [cls, max]}", "key 'pooling' must be one of cls, mean, got 'max'"),
    ("sweep: {adapter_size: 64}", "key 'sweep' must be Optional[dict[str, list]], got dict"),
])
def test_a_bad_sweep_names_the_key(tmp_path, body, message):
    path = _file(tmp_path, body + "\n")
    with pytest.raises(UserError) as err:
        config, sources = load_config(path)
        sweep.points(config, sources["sweep"])
    assert message in str(err.value)
    faults.record("config", f"a sweep: `{body}`", str(err.value).split(": ", 1)[1], tmp_path)


def _result(path: Path, runs: dict, cache_build=None) -> Path:
    """A result file with the given ``{mode: [(dev, test, seconds), ...]}``."""
    path.write_text(json.dumps({
        "experiment": path.stem, "provenance": {"config": {"task": "text_classification", "dataset": "toy",
                                                           "model": "m", "cut_layer": 2, "metric": "micro_f1"}},
        "cache": None if cache_build is None else {"path": "c", "build_seconds": cache_build, "bytes": 1},
        "runs": {mode: [{"seed": i, "dev": {"micro_f1": d}, "test": {"micro_f1": t}, "seconds": s,
                         "history": {"epochs": [{"train_seconds": s / 2}]}, "inference_seconds": s / 4}
                        for i, (d, t, s) in enumerate(rs)] for mode, rs in runs.items()}}))
    return path


def test_the_choice_is_on_dev_only_and_the_grid_is_timed_with_its_cache_once(tmp_path):
    config, sources = load_config(_file(tmp_path, "sweep: {learning_rate: [1.0e-5, 1.0e-4, 1.0e-3]}\n"))
    grid = sweep.points(config, sources["sweep"])
    files = [
        _result(tmp_path / "a.json", {"full": [(0.5, 0.9, 10.0)], "semi_frozen": [(0.6, 0.6, 4.0), (0.6, 0.8, 4.0)]}, 3.0),
        _result(tmp_path / "b.json", {"full": [(0.7, 0.2, 10.0)], "semi_frozen": [(0.6, 0.9, 4.0), (0.6, 0.5, 4.0)]}, 3.0),
        _result(tmp_path / "c.json", {"full": [(0.6, 0.9, 10.0)], "semi_frozen": [(0.1, 0.9, 4.0), (0.1, 0.9, 4.0)]}, 3.0),
    ]
    summary = sweep.summarize("exp", config.sweep, grid, files, "cpu")
    # full: the best dev (b), though its test is the worst; semi_frozen: a and b tie on dev, the first wins.
    assert summary["chosen"]["full"]["point"] == "learning_rate=0.0001"
    assert summary["chosen"]["full"]["test_mean"] == 0.2
    assert summary["chosen"]["semi_frozen"]["point"] == "learning_rate=1e-05"
    assert summary["chosen"]["semi_frozen"]["test_mean"] == pytest.approx(0.7)
    assert summary["chosen"]["semi_frozen"]["test_std"] == pytest.approx(math.sqrt(0.02))
    # One cache (the same path in every point) built once: 3 s, with 24 s of semi_frozen runs vs 30 s of full.
    assert summary["caches"] == 1 and summary["cache_build_seconds"] == 3.0
    assert summary["grid_time"] == [{"recycled": "semi_frozen", "baseline": "full", "recycled_s": 27.0,
                                     "baseline_s": 30.0, "speedup": pytest.approx(30 / 27)}]
    # Each point's mean training epoch and inference time, for the cut study's speedups.
    assert summary["points"][0]["modes"]["full"]["train_epoch_s"] == 5.0
    assert summary["points"][0]["modes"]["semi_frozen"]["infer_s"] == 1.0
    assert any("semi_frozen: chose learning_rate=1e-05 (dev 60.00), test micro_f1 70.00 +- 14.14" == line
               for line in sweep.describe(summary))


def _sweep_command(tmp_path, name: str, sweep_yaml: str):
    """A tiny model, the toy data and an experiment file sweeping ``sweep_yaml``: the file and the
    command running it."""
    model = save_tiny_bert(tmp_path / "model")
    write_toy_dataset(tmp_path / "data")
    config = tmp_path / f"{name}.yaml"
    config.write_text(f"base: {DEFAULTS}\ndataset: toy\nmodel: {model}\ncut_layer: 2\nmax_epochs: 1\n"
                      "batch_size: 8\nwarmup_steps: 0\nmax_length: 24\nmodes: [full, semi_frozen]\n"
                      f"sweep: {sweep_yaml}\n")
    cmd = [sys.executable, str(ROOT / "TextClassificationScripts/run_experiment.py"), str(config), "--data-dir",
           str(tmp_path / "data"), "--results-dir", str(tmp_path / "results"), "--cache-root", str(tmp_path / "caches")]
    return config, cmd


def test_a_sweep_end_to_end_shares_one_cache_resumes_and_is_chosen_on_dev(tmp_path):
    config, cmd = _sweep_command(tmp_path, "grid", "{learning_rate: [1.0e-3, 1.0e-5], pooling: [cls, mean]}")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "results/text_classification/toy"
    names = ["learning_rate=0.001,pooling=cls", "learning_rate=0.001,pooling=mean",
             "learning_rate=1e-05,pooling=cls", "learning_rate=1e-05,pooling=mean"]
    results = [json.loads((folder / f"grid@{n}.json").read_text()) for n in names]
    assert [r["provenance"]["config"]["pooling"] for r in results] == ["cls", "mean"] * 2
    assert [r["provenance"]["config"]["learning_rate"]["semi_frozen"] for r in results] == [1e-3, 1e-3, 1e-5, 1e-5]
    assert results[0]["provenance"]["config_sources"]["learning_rate"] == str(config)
    assert proc.stderr.count("built cache") == 1 and len({r["cache"]["path"] for r in results}) == 1
    summary = json.loads((tmp_path / "results/sweeps/text_classification/toy/grid.json").read_text())
    for mode in ("full", "semi_frozen"):
        devs = [r["runs"][mode][0]["dev"]["micro_f1"] for r in results]
        chosen = summary["chosen"][mode]
        assert chosen["dev_mean"] == max(devs) and chosen["point"] == names[devs.index(max(devs))]
    seconds = sum(r["runs"]["semi_frozen"][0]["seconds"] for r in results) + results[0]["cache"]["build_seconds"]
    assert summary["grid_time"][0]["recycled_s"] == pytest.approx(seconds)
    assert "semi_frozen: chose" in proc.stderr and "grid time semi_frozen with the cache" in proc.stderr
    summary_rows = (tmp_path / "results/summary.csv").read_text()
    assert all(f"grid@{n}" in summary_rows for n in names)

    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("already in") == 8 and "built cache" not in again.stderr


def test_a_cut_sweep_runs_full_once_and_builds_one_cache_per_cut(tmp_path):
    _, cmd = _sweep_command(tmp_path, "cuts", "{cut_layer: [1, 3]}")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "results/text_classification/toy"
    first, second = (json.loads((folder / f"cuts@cut_layer={k}.json").read_text()) for k in (1, 3))
    assert sorted(first["runs"]) == ["full", "semi_frozen"] and sorted(second["runs"]) == ["semi_frozen"]
    assert proc.stderr.count("built cache") == 2 and first["cache"]["path"] != second["cache"]["path"]
    summary = json.loads((tmp_path / "results/sweeps/text_classification/toy/cuts.json").read_text())
    assert summary["chosen"]["full"]["point"] == "cut_layer=1" and summary["seconds_by_mode"]["full"] == pytest.approx(
        first["runs"]["full"][0]["seconds"])
    # One full run against a semi_frozen run per cut is no grid-time comparison: none is reported.
    assert summary["grid_time"] == [] and "grid time" not in proc.stderr
