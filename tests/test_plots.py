"""The study plots: what the gap chart reads from result files, and the command writing PNGs."""

import json

import pytest

from recycling import config, plots


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
    sweep.write_text(json.dumps({"experiment": "grid", "metric": "micro_f1", "sweep": {"learning_rate": [1e-5, 1e-4]},
                                 "points": [point("learning_rate=1e-05", 0.5), point("learning_rate=0.0001", 0.7)],
                                 "chosen": {"semi_frozen": {"point": "learning_rate=0.0001"}}}))
    assert plots.main(["--results-dir", str(tmp_path)]) == 0
    written = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert written == ["gap_to_full.png", "sweep__text_classification__a__grid.png"]
    for name in written:
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_mode_has_a_colour():
    # A sweep over a mode without one stopped the command (cross_model's rate grid did).
    assert set(plots.COLORS) == set(config.MODES)


def _cut_sweep() -> dict:
    mode = lambda test, std, epoch, infer: {"dev_mean": test, "test_mean": test, "test_std": std,  # noqa: E731
                                           "train_epoch_s": epoch, "infer_s": infer}
    return {"experiment": "cuts", "metric": "macro_f1", "sweep": {"cut_layer": [1, 2]},
            "points": [{"point": "cut_layer=1", "values": {"cut_layer": 1},
                        "modes": {"full": mode(0.70, None, 12.0, 6.0), "semi_frozen": mode(0.69, 0.01, 10.0, 5.0)}},
                       {"point": "cut_layer=2", "values": {"cut_layer": 2},
                        "modes": {"semi_frozen": mode(0.60, None, 4.0, 2.0)}}],
            "chosen": {"full": {"point": "cut_layer=1", **mode(0.70, None, 12.0, 6.0)},
                       "semi_frozen": {"point": "cut_layer=1", **mode(0.69, 0.01, 10.0, 5.0)}}}


def test_a_cut_sweep_plots_score_against_speedup_over_its_one_full_run(tmp_path):
    summary = _cut_sweep()
    assert plots.is_cut_sweep(summary)
    assert plots.cut_points(summary) == {"semi_frozen": [
        {"cut": 1, "train_speedup": 1.2, "infer_speedup": 1.2, "score": 69.0, "std": 1.0},
        {"cut": 2, "train_speedup": 3.0, "infer_speedup": 3.0, "score": 60.0, "std": 0.0}]}
    # Without full, or sweeping more than the cut, there is no reference: the ordinary sweep chart.
    assert not plots.is_cut_sweep({**summary, "chosen": {"semi_frozen": summary["chosen"]["semi_frozen"]}})
    assert not plots.is_cut_sweep({**summary, "sweep": {"cut_layer": [1, 2], "learning_rate": [1e-4]}})
    path = tmp_path / "sweeps" / "text_classification" / "a" / "cuts.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(summary))
    assert plots.main(["--results-dir", str(tmp_path)]) == 0
    assert (tmp_path / "plots" / "sweep__text_classification__a__cuts.png").read_bytes()[:4] == b"\x89PNG"


def test_the_codec_chart_takes_the_codec_study_rows_that_know_their_bytes_per_token(tmp_path):
    folder = tmp_path / "text_classification" / "a"
    for name, codec, nbytes in (("codec__fp16", "float16", 7680), ("codec__pca", "pca96-float16", 1920),
                                ("other", "float16", 7680)):
        _result(folder, name, {"semi_frozen": [(0.7, 0.7)]})
        path = folder / f"{name}.json"
        result = json.loads(path.read_text())
        result["cache"] = {"path": "c", "build_seconds": 1.0, "bytes": nbytes, "tokens": 10, "codec": codec}
        path.write_text(json.dumps(result))
    _result(folder, "codec__old", {"semi_frozen": [(0.7, 0.7)]})  # no cache record: no bytes per token
    rows = plots.codec_rows(tmp_path)
    assert [(r["experiment"], r["codec"], r["bytes_per_token"]) for r in rows] == [
        ("codec__fp16", "float16", 768.0), ("codec__pca", "pca96-float16", 192.0)]
    assert tmp_path / "plots" / "codecs.png" in plots.make_all(tmp_path, tmp_path / "plots")
    assert (tmp_path / "plots" / "codecs.png").stat().st_size > 0


def _cached_result(folder, name, runs, codec, nbytes, rate=5e-4, pooling="mean", first_seed=0):
    """A result file with a cache record and the config keys the float16 reference is matched on;
    each mode's runs have seeds ``first_seed``, ``first_seed + 1``, ..."""
    _result(folder, name, runs)
    path = folder / f"{name}.json"
    result = json.loads(path.read_text())
    for mode_runs in result["runs"].values():
        for run in mode_runs:
            run["seed"] += first_seed
    result["provenance"]["config"].update({
        "modes": list(runs), "seeds": list(range(3)), "learning_rate": {"full": 2e-4, "semi_frozen": rate},
        "pooling": pooling, "cache_dtype": "float16", "cache_codec": None if codec == "float16" else codec,
        "cache_codec_dim": None})
    result["cache"] = {"path": "c", "build_seconds": 1.0, "bytes": nbytes, "tokens": 10, "codec": codec}
    path.write_text(json.dumps(result))


def test_a_codec_panel_without_float16_takes_the_float16_runs_of_the_same_settings_and_seeds(tmp_path):
    folder = tmp_path / "text_classification" / "a"
    _cached_result(folder, "codec__int8", {"semi_frozen": [(0.7, 0.70), (0.7, 0.72)]}, "int8", 3840)
    # Seed 0 in one file and seed 1 in another (a grid's point and the chosen file's seeds): both taken.
    _cached_result(folder, "grid", {"full": [(0.8, 0.8)], "semi_frozen": [(0.7, 0.74)]}, "float16", 7680)
    _cached_result(folder, "chosen", {"semi_frozen": [(0.7, 0.78), (0.7, 0.80)]}, "float16", 7680, first_seed=1)
    # Listed first, so they would be taken if other settings matched.
    _cached_result(folder, "a_other_rate", {"semi_frozen": [(0.7, 0.5), (0.7, 0.5)]}, "float16", 7680, rate=1e-4)
    _cached_result(folder, "a_other_pooling", {"semi_frozen": [(0.7, 0.5), (0.7, 0.5)]}, "float16", 7680, pooling="cls")
    rows = plots.codec_rows(tmp_path)
    assert [(r["experiment"], r["codec"], r["n_seeds"], r["test_mean"], r["bytes_per_token"]) for r in rows] == [
        ("codec__int8", "int8", 2, 71.0, 384.0), ("grid + chosen", "float16", 2, 76.0, 768.0)]
    # A seed the float16 files do not have: no reference (a mean over other seeds would mislead).
    _cached_result(folder, "codec__int8", {"semi_frozen": [(0.7, 0.7)] * 4}, "int8", 3840)
    assert [r["codec"] for r in plots.codec_rows(tmp_path)] == ["int8"]
    # The study's own float16 row is the reference when it has one.
    _cached_result(folder, "codec__fp16", {"semi_frozen": [(0.7, 0.6)] * 3}, "float16", 7680)
    assert [(r["experiment"], r["codec"]) for r in plots.codec_rows(tmp_path)] == [
        ("codec__fp16", "float16"), ("codec__int8", "int8")]


def test_training_settings_read_a_missing_key_as_its_default():
    # A result file from before max_grad_norm existed trained without clipping: its default, None.
    old = {"model": "m", "learning_rate": {"semi_frozen": 5e-4}, "max_epochs": 3}
    new = dict(old, max_grad_norm=None, cache_codec="int8", seeds=[1, 2])
    assert plots.training_settings(old, "semi_frozen") == plots.training_settings(new, "semi_frozen")
    assert plots.training_settings(old, "semi_frozen") != plots.training_settings(dict(new, max_grad_norm=1.0), "semi_frozen")
