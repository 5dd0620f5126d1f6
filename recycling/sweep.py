"""A grid of settings in one experiment file: one experiment per point, chosen on dev, timed as a whole.

``sweep: {learning_rate: [5.0e-5, 1.0e-4], adapter_size: [64, 256]}`` runs the file's experiment at
every combination (a learning rate given as one number applies to every mode). Each point is an
ordinary experiment, ``<experiment>@<key>=<value>,...``, with its own result file, resumable like
any other; every point shares the tokenized data and, where the cut and cache dtype are the same,
one cache. A mode runs only at the first point that changes a setting it reads (``full`` once in a
sweep over ``cut_layer``: see ``IGNORED_BY``); a point that would rerun only such modes is left out.
The sweep's file (``<results>/sweeps/<task>/<dataset>/<experiment>.json``) then picks,
for each mode, the point with the best mean dev score (test scores play no part) and reports its
test score, and the grid's total time: the cached modes with their cache builds against their
baselines reading text, where both ran at the same points (a baseline that ran once, as ``full`` in a
cut sweep, is each point's reference, not a grid of its own).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from pathlib import Path

from recycling.config import BASELINE_OF, CACHED_MODES, IGNORED_BY, ExperimentConfig, from_dict
from recycling.metrics import mean_std
from recycling.results import environment, mean_seconds, portable_path, read_result

logger = logging.getLogger("recycling.sweep")


@dataclasses.dataclass(frozen=True)
class Point:
    name: str  # appended to the experiment's name: "learning_rate=0.0001,adapter_size=64"
    values: dict  # the swept keys' values at this point
    config: ExperimentConfig  # the experiment's config with those values and no sweep


def _text(value) -> str:
    if isinstance(value, dict):
        return "+".join(f"{k}-{_text(v)}" for k, v in value.items())
    return format(value, "g") if isinstance(value, float) else str(value)


def _what_mode_reads(mode: str, config: ExperimentConfig, keys: list[str]) -> tuple:
    """The swept settings ``mode`` reads, at ``config``'s values: equal tuples, the same run."""
    return tuple((k, repr(config.learning_rate[mode] if k == "learning_rate" else getattr(config, k)))
                 for k in keys if k not in IGNORED_BY[mode])


def points(config: ExperimentConfig, source: str) -> list[Point]:
    """Every combination of the swept values, in the order the file lists them, each with the modes
    it runs: a mode whose settings an earlier point already ran is not run again."""
    base = dataclasses.asdict(config) | {"sweep": None}
    keys = list(config.sweep)
    grid, ran = [], set()
    for combo in itertools.product(*(config.sweep[k] for k in keys)):
        values = dict(zip(keys, combo))
        settings = dict(base)
        for key, value in values.items():
            if key == "learning_rate":  # one number for every mode, or a mapping over the file's rates
                value = {m: value for m in config.modes} if not isinstance(value, dict) else {**base[key], **value}
            settings[key] = value
        name = ",".join(f"{k}={_text(v)}" for k, v in values.items())
        where = f"{source} (sweep point {name})"
        point = from_dict(settings, where)
        runs = {m: _what_mode_reads(m, point, keys) for m in config.modes}
        modes = [m for m in config.modes if (m, runs[m]) not in ran]
        ran.update(runs.items())
        if not modes:
            logger.info("sweep point %s: every mode already ran at an earlier point (they ignore %s)", name,
                        ", ".join(keys))
            continue
        if modes != list(config.modes):
            point = from_dict(settings | {"modes": modes}, where)
        grid.append(Point(name, values, point))
    return grid


def _run_seconds(run: dict) -> float:
    """Wall time of one run (training with its dev passes, then dev and test inference); files from
    before runs recorded it: their training epochs and inference."""
    if "seconds" in run:
        return run["seconds"]
    return sum(e["train_seconds"] for e in run["history"]["epochs"]) + run["inference_seconds"]


def summarize(experiment: str, sweep: dict, grid: list[Point], files: list[Path], device) -> dict:
    """Per point and mode: dev and test mean and std over seeds, and seconds; per mode the point
    chosen on dev; and the grid's total time with the cache (cache builds counted once per cache)
    and without it (the baseline modes), where the two ran at the same points."""
    metric = grid[0].config.metric
    rows, builds, seconds, ran_at = [], {}, {}, {}
    for point, path in zip(grid, files):
        result = read_result(path)
        if result.get("cache"):
            builds[result["cache"]["path"]] = result["cache"]["build_seconds"]
        modes = {}
        for mode, runs in result["runs"].items():
            if not runs:
                continue
            dev = mean_std([r["dev"][metric] for r in runs])
            test = mean_std([r["test"][metric] for r in runs])
            total = sum(_run_seconds(r) for r in runs)
            seconds[mode] = seconds.get(mode, 0.0) + total
            ran_at.setdefault(mode, []).append(point.name)
            epoch_s, infer_s = mean_seconds(runs)
            modes[mode] = {"n_seeds": len(runs), "dev_mean": dev[0], "dev_std": dev[1], "test_mean": test[0],
                           "test_std": test[1], "seconds": total, "train_epoch_s": epoch_s, "infer_s": infer_s}
        rows.append({"point": point.name, "values": point.values, "file": portable_path(str(path)), "modes": modes})
    chosen = {}
    for mode in sorted({m for row in rows for m in row["modes"]}):
        scored = [row for row in rows if mode in row["modes"]]
        best = max(scored, key=lambda row: row["modes"][mode]["dev_mean"])  # ties: the earlier point
        chosen[mode] = {"point": best["point"], "values": best["values"], **best["modes"][mode]}
    build_s = sum(builds.values())
    grid_time = []
    for mode in CACHED_MODES:
        baseline = BASELINE_OF[mode]
        if mode in seconds and baseline in seconds and ran_at[mode] == ran_at[baseline]:
            with_cache = seconds[mode] + build_s
            grid_time.append({"recycled": mode, "baseline": baseline, "recycled_s": with_cache,
                              "baseline_s": seconds[baseline], "speedup": seconds[baseline] / with_cache})
    return {
        "experiment": experiment,
        "metric": metric,
        "selection": "per mode, the point with the highest mean dev score; test reported for it",
        "sweep": sweep,
        "points": rows,
        "chosen": chosen,
        "seconds_by_mode": seconds,
        "cache_build_seconds": build_s,
        "caches": len(builds),
        "grid_time": grid_time,
        "environment": environment(device),
    }


def describe(summary: dict) -> list[str]:
    """Log lines: the chosen point of each mode and the grid's time with and without the cache."""
    lines = []
    for mode, c in summary["chosen"].items():
        std = "" if c["test_std"] is None or math.isnan(c["test_std"]) else f" +- {100 * c['test_std']:.2f}"
        lines.append(f"{mode}: chose {c['point']} (dev {100 * c['dev_mean']:.2f}), test {summary['metric']} "
                     f"{100 * c['test_mean']:.2f}{std}")
    for g in summary["grid_time"]:
        lines.append(f"grid time {g['recycled']} with the cache {g['recycled_s']:.0f}s vs {g['baseline']} from text "
                     f"{g['baseline_s']:.0f}s: {g['speedup']:.2f}x")
    return lines
