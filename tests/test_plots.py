"""The study plots: what the gap chart reads from result files, and the command writing PNGs."""

import json

import pytest

from recycling import plots


def _result(folder, name, runs, device="cpu (test)"):
    """A result file with ``{mode: [(dev, test), ...]}`` for one device."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({
        "experiment": name, "cache": None,
        "provenance": {"device": device, "config": {"task": "text_classification", "dataset": folder.name,
                                                    "model": "m", "cut_layer": 3, "metric": "micro_f1"}},
        "runs": {mode: [{"seed": i, "dev": {"micro_f1": d}, "test": {"micro_f1": t}, "inference_seconds": 1.0,
                         "history": {"epochs": [{"train_seconds": 2.0}]}} for i, (d, t) in enumerate(rs)]
                 for mode, rs in runs.items()}}))


def test_gaps_are_recycled_minus_full_in_points_and_need_full_beside_them(tmp_path):
    tc = tmp_path / "text_classification"
    _result(tc / "a", "exp", {"full": [(0.8, 0.80), (0.8, 0.82)], "semi_frozen": [(0.7, 0.70), (0.7, 0.78)],
                              "adapters": [(0.5, 0.61)]})
    _result(tc / "a", "semi_only", {"semi_frozen": [(0.7, 0.7)]})  # nothing to compare with
    rows = plots.gap_rows(tmp_path)
    assert [(r["mode"], r["gap"], r["n_seeds"]) for r in rows] == [
        ("semi_frozen", pytest.approx(-7.0), 2), ("adapters", pytest.approx(-20.0), 1)]
    assert rows[0]["label"] == "a: exp (micro_f1)" and rows[0]["std"] == pytest.approx(5.66)
    assert rows[1]["std"] == 0.0


def test_the_command_writes_the_gap_chart_and_one_chart_per_sweep(tmp_path):
    _result(tmp_path / "text_classification" / "a", "exp", {"full": [(0.8, 0.8)], "semi_frozen": [(0.7, 0.75)]})
    sweep = tmp_path / "sweeps" / "text_classification" / "a" / "grid.json"
    sweep.parent.mkdir(parents=True)
    point = lambda name, dev: {"point": name, "values": {}, "modes": {  # noqa: E731
        "semi_frozen": {"dev_mean": dev, "test_mean": dev - 0.01, "test_std": None}}}
    sweep.write_text(json.dumps({"experiment": "grid", "metric": "micro_f1",
                                 "points": [point("learning_rate=1e-05", 0.5), point("learning_rate=0.0001", 0.7)],
                                 "chosen": {"semi_frozen": {"point": "learning_rate=0.0001"}}}))
    assert plots.main(["--results-dir", str(tmp_path)]) == 0
    written = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert written == ["gap_to_full.png", "sweep__text_classification__a__grid.png"]
    for name in written:
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
