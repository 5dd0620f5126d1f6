"""The accuracy studies' plots, made from the result files alone: ``python -m recycling.plots``.

- ``gap_to_full.png``: for every experiment with ``full`` and a recycled mode on one device, each
  recycled mode's mean test score minus ``full``'s (points), with the recycled mode's std over seeds.
- ``sweep__<task>__<dataset>__<experiment>.png``: for every sweep, each mode's mean dev and test
  score at each point, the point chosen on dev marked; for a sweep over ``cut_layer`` alone with
  ``full`` in it, the recycled modes' test score against their speedup over ``full`` (training epoch
  and inference), one point per cut, ``full``'s score as the reference line.
- ``codecs.png``: the codec study (experiments ``codec__...``): test score against the cache's bytes
  per token, one panel per dataset and model, each point labelled with its codec. A mode with no
  float16 run in the study gets its float16 reference from the other result files: the runs of
  that mode with the same training settings and seeds from the default cache (a codec file often
  reruns the settings of ``chosen/`` with another codec).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display
import matplotlib.pyplot as plt  # noqa: E402

from recycling.config import CACHED_MODES, MODES, recorded_defaults  # noqa: E402
from recycling.errors import exit_code  # noqa: E402
from recycling.files import atomic_path  # noqa: E402
from recycling.results import all_results, all_summary_rows, mode_row, run_device  # noqa: E402

logger = logging.getLogger("recycling.plots")
COLORS = {"full": "black", "semi_frozen": "tab:blue", "adapters": "tab:orange", "adapters_full": "tab:green",
          "lora": "tab:purple", "lora_full": "tab:brown", "cross_model": "tab:red"}
CODEC_STUDY = "codec__"  # experiments of the codec study (HyperparameterSelection/<task>/codec/)
# Config keys that do not change what a mode's run computes: which runs a file holds, how and where
# its cache is stored or read, and the other modes' rates (a mode's own rate is compared).
NOT_TRAINING = ("modes", "seeds", "sweep", "learning_rate", "cache_codec", "cache_codec_dim", "cache_dir",
                "cache_batch_size", "verify_cache", "prefetch_batches")


def gap_rows(results_dir: Path) -> list[dict]:
    """``{label, mode, gap, std, n_seeds}`` per experiment, device and recycled mode that has ``full``
    beside it, in points of the experiment's metric."""
    summary = all_summary_rows(results_dir)
    full = {(r["experiment"], r["dataset"], r["device"]): r for r in summary if r["mode"] == "full"}
    rows = []
    for r in summary:
        reference = full.get((r["experiment"], r["dataset"], r["device"]))
        if r["mode"] in CACHED_MODES and reference is not None:
            rows.append({"label": f"{r['dataset']}: {r['experiment']} ({r['metric']})", "mode": r["mode"],
                         "gap": r["test_mean"] - reference["test_mean"], "std": r["test_std"] or 0.0,
                         "n_seeds": r["n_seeds"]})
    return rows


def plot_gaps(rows: list[dict], out: Path) -> None:
    labels = list(dict.fromkeys(r["label"] for r in rows))
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(labels) + 1.5))
    for offset, mode in ((-0.2, "semi_frozen"), (0.0, "adapters"), (0.2, "lora")):
        mine = [r for r in rows if r["mode"] == mode]
        if not mine:
            continue
        ax.errorbar([r["gap"] for r in mine], [labels.index(r["label"]) + offset for r in mine],
                    xerr=[r["std"] for r in mine], fmt="o", color=COLORS[mode], label=mode, capsize=3)
    ax.axvline(0, color=COLORS["full"], linewidth=1, label="full (reference)")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test score minus full's (points; bars: std over seeds)")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, out)


def plot_sweep(summary: dict, out: Path) -> None:
    names = [p["point"] for p in summary["points"]]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4))
    x = range(len(names))
    for mode in [m for m in MODES if m in summary["chosen"]]:
        dev = [100 * p["modes"][mode]["dev_mean"] if mode in p["modes"] else None for p in summary["points"]]
        test = [100 * p["modes"][mode]["test_mean"] if mode in p["modes"] else None for p in summary["points"]]
        ax.plot(x, dev, "o--", color=COLORS[mode], alpha=0.6, label=f"{mode} dev")
        ax.plot(x, test, "o-", color=COLORS[mode], label=f"{mode} test")
        best = names.index(summary["chosen"][mode]["point"])
        ax.plot([best], [test[best]], "*", color=COLORS[mode], markersize=16)
    ax.set_xticks(list(x), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{summary['metric']} (star: chosen on dev)")
    ax.set_title(summary["experiment"], fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, out)


def cut_points(summary: dict) -> dict[str, list[dict]]:
    """Per recycled mode of a cut sweep, one ``{cut, train_speedup, infer_speedup, score, std}`` per
    point: speedups over the sweep's ``full`` run (training epoch, dev + test inference), in points."""
    full = summary["chosen"]["full"]
    lines = {}
    for mode in ("semi_frozen", "adapters", "adapters_full"):
        lines[mode] = [{"cut": p["values"]["cut_layer"], "train_speedup": full["train_epoch_s"] / m["train_epoch_s"],
                        "infer_speedup": full["infer_s"] / m["infer_s"], "score": 100 * m["test_mean"],
                        "std": 0.0 if m["test_std"] is None else 100 * m["test_std"]}
                       for p in summary["points"] if (m := p["modes"].get(mode))]
    return {mode: line for mode, line in lines.items() if line}


def plot_cut(summary: dict, out: Path) -> None:
    lines = cut_points(summary)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, what in ((axes[0], "train_speedup", "training epoch"), (axes[1], "infer_speedup", "inference (dev + test)")):
        for mode, line in lines.items():
            ax.errorbar([c[key] for c in line], [c["score"] for c in line], yerr=[c["std"] for c in line], fmt="o-",
                        color=COLORS[mode], label=mode, capsize=3)
            for c in line:
                ax.annotate(f"k={c['cut']}", (c[key], c["score"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axhline(100 * summary["chosen"]["full"]["test_mean"], color=COLORS["full"], linewidth=1, label="full")
        ax.set_xlabel(f"{what} speedup over full (this sweep's runs)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"test {summary['metric']} (bars: std over seeds)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{summary['experiment']}: the cut k", fontsize=9)
    _save(fig, out)


def training_settings(config: dict, mode: str) -> str:
    """What decides the runs of ``mode`` under ``config``, apart from the seed and the cache's codec."""
    # Result files written before a key existed lack it (e.g. max_grad_norm); their runs used its default.
    kept = {k: v for k, v in (recorded_defaults() | config).items() if k not in NOT_TRAINING}
    kept["learning_rate"] = (config.get("learning_rate") or {}).get(mode)
    return json.dumps(kept, sort_keys=True)


def _seeds(result: dict, row: dict) -> tuple[int, ...]:
    return tuple(sorted(r["seed"] for r in result["runs"][row["mode"]] if run_device(result, r) == row["device"]))


def float16_reference(results: list[dict], codec_result: dict, row: dict, seeds: tuple[int, ...]) -> dict | None:
    """The summary row of the float16 runs that match ``row`` (a codec run's mode and device) in
    training settings and ``seeds``, gathered from any result files; None unless every seed is found."""
    mode, want = row["mode"], training_settings(codec_result["provenance"]["config"], row["mode"])
    found: dict[int, tuple[dict, dict]] = {}
    for result in results:
        config = result["provenance"]["config"]
        if config.get("cache_codec") is not None or not (result.get("cache") or {}).get("tokens"):
            continue
        if training_settings(config, mode) != want:
            continue
        for run in result["runs"].get(mode, []):
            if run_device(result, run) == row["device"]:
                found.setdefault(run["seed"], (result, run))
    if not all(seed in found for seed in seeds):
        return None
    sources = [found[seed][0] for seed in seeds]
    reference = mode_row(sources[0], mode, row["device"], [found[seed][1] for seed in seeds])
    reference["experiment"] = " + ".join(dict.fromkeys(r["experiment"] for r in sources))
    return reference


def codec_rows(results_dir: Path) -> list[dict]:
    """The codec study's summary rows (experiments named ``codec__...``) that know their bytes per
    token, and the float16 reference of each panel's mode that has no float16 row in the study."""
    everything = all_results(results_dir)
    study = [(result, row) for result, rows in everything if result["experiment"].startswith(CODEC_STUDY)
             for row in rows if row["bytes_per_token"] != ""]
    rows = [row for _, row in study]
    panel = lambda r: (r["dataset"], r["model"], r["cut_layer"], r["mode"], r["device"])  # noqa: E731
    has_float16 = {panel(r) for r in rows if r["codec"] == "float16"}
    added = set()
    for result, row in study:
        seeds = _seeds(result, row)
        if panel(row) in has_float16 or (panel(row), seeds) in added:
            continue
        reference = float16_reference([r for r, _ in everything], result, row, seeds)
        if reference is not None:
            added.add((panel(row), seeds))
            rows.append(reference)
    return rows


def plot_codecs(rows: list[dict], out: Path) -> None:
    """Storage against accuracy: test score over bytes per token, one panel per dataset and model."""
    panels = list(dict.fromkeys((r["dataset"], r["model"], r["cut_layer"]) for r in rows))
    # Two panels per row: one row of four or more panels is too wide to read in the README.
    columns = min(len(panels), 2)
    rows_of_panels = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows_of_panels, columns, figsize=(5.5 * columns, 4 * rows_of_panels), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        mine = [r for r in rows if (r["dataset"], r["model"], r["cut_layer"]) == panel]
        for mode in [m for m in MODES if any(r["mode"] == m for r in mine)]:
            line = sorted((r for r in mine if r["mode"] == mode), key=lambda r: r["bytes_per_token"])
            ax.errorbar([r["bytes_per_token"] for r in line], [r["test_mean"] for r in line],
                        yerr=[r["test_std"] or 0.0 for r in line], fmt="o", color=COLORS[mode], label=mode, capsize=3)
            for r in line:
                ax.annotate(r["codec"], (r["bytes_per_token"], r["test_mean"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bytes per token (whole cache / rows)")
        ax.set_ylabel(f"test {mine[0]['metric']} (bars: std over seeds)")
        ax.set_title(f"{panel[0]}: {panel[1]}, k={panel[2]}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, out)


def is_cut_sweep(summary: dict) -> bool:
    return list(summary["sweep"]) == ["cut_layer"] and "full" in summary["chosen"]


def _save(fig, out: Path) -> None:
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    logger.info("wrote %s", out)


def make_all(results_dir: Path, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    rows = gap_rows(results_dir)
    if rows:
        plot_gaps(rows, out_dir / "gap_to_full.png")
        written.append(out_dir / "gap_to_full.png")
    rows = codec_rows(results_dir)
    if rows:
        plot_codecs(rows, out_dir / "codecs.png")
        written.append(out_dir / "codecs.png")
    for path in sorted(results_dir.glob("sweeps/*/*/*.json")):
        summary = json.loads(path.read_text(encoding="utf-8"))
        task, dataset = path.parts[-3], path.parts[-2]
        out = out_dir / f"sweep__{task}__{dataset}__{path.stem}.png"
        (plot_cut if is_cut_sweep(summary) else plot_sweep)(summary, out)
        written.append(out)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results-dir", default="results")
    p.add_argument("--out-dir", default=None, help="default: <results-dir>/plots")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = Path(args.results_dir)
    return exit_code(lambda: make_all(results, Path(args.out_dir) if args.out_dir else results / "plots"))


if __name__ == "__main__":
    raise SystemExit(main())
