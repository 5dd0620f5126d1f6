"""``results/benchmarks/summary.csv``, its Markdown table and the ratio-vs-sequence-length plot,
rebuilt from every result file under ``results/benchmarks/<device>/``."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from recycling.files import write_text

logger = logging.getLogger("benchmarks")

COLUMNS = ("model", "weights", "device", "level", "setting", "seq_len", "batch_size", "measured_ratio",
           "ideal_ratio", "efficiency", "baseline_s", "recycled_s", "peak_mem_baseline", "peak_mem_recycled",
           "tflops_baseline", "tflops_recycled", "padding_fraction", "cut_layer", "layers", "precision", "git_sha")


def _round(value, digits=4):
    return round(value, digits) if isinstance(value, float) else value


def rows_of(result: dict) -> list[dict]:
    env, model = result["environment"], result["model"]
    common = {"model": model["name"], "weights": model["weights"], "device": env["device"],
              "cut_layer": model["cut_layer"], "layers": model["layers"], "precision": result["suite"]["precision"],
              "git_sha": env["git_sha"]}
    # the step level may come from an earlier invocation (--epochs-only): its own code and device
    step_env = result.get("step_level_environment", env)
    rows = []
    for p in result["step_level"]:
        rows.append({**common, "device": step_env["device"], "git_sha": step_env["git_sha"], "level": "step", "setting": p["pair"], "seq_len": p["seq_len"],
                     "batch_size": p["batch_size"],
                     **{k: _round(p.get(k)) for k in COLUMNS if k in p and k not in ("seq_len", "batch_size")}})
    epoch = result.get("epoch_level")
    if epoch:
        for p in epoch["pairs"]:
            rows.append({**common, "level": "epoch", "setting": p["pair"], "seq_len": epoch["config"]["max_length"],
                         "batch_size": epoch["config"]["batch_size"], "padding_fraction": _round(epoch["padding_fraction"]),
                         **{k: _round(p.get(k)) for k in COLUMNS if k in p}})
    codec = result.get("codec_level")
    if codec:
        codec_env = result.get("codec_level_environment", env)
        plain = next(r for r in codec["codecs"] if r["stored_as"] == codec["config"]["cache_dtype"])
        for r in codec["codecs"]:
            if r is plain:
                continue
            rows.append({**common, "device": codec_env["device"], "git_sha": codec_env["git_sha"], "level": "codec",
                         "setting": f"read + decode: {r['codec']} vs {plain['codec']}",
                         "seq_len": codec["config"]["max_length"], "batch_size": codec["config"]["batch_size"],
                         "measured_ratio": _round(r["speed_vs_plain"]), "baseline_s": _round(plain["read_decode_s"]),
                         "recycled_s": _round(r["read_decode_s"])})
    return rows


def load_results(bench_dir: Path) -> list[dict]:
    results = []
    for path in sorted(bench_dir.glob("*/*.json")):
        try:
            results.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            logger.warning("skipping %s: %s", path, err)
    return results


def markdown(rows: list[dict]) -> str:
    head = ("| model | device | level | setting | seq | batch | measured | ideal | efficiency | baseline s "
            "| recycled s | peak mem MB (base / rec) |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        mem = ""
        if r.get("peak_mem_baseline") is not None:
            mem = f"{r['peak_mem_baseline'] / 2**20:.0f} / {r['peak_mem_recycled'] / 2**20:.0f}"
        ratio = "" if r.get("measured_ratio") is None else f"{r['measured_ratio']:.2f}"
        eff = "" if r.get("efficiency") is None else f"{r['efficiency']:.2f}"
        fmt = lambda v: "" if v is None else f"{v:.4g}"  # noqa: E731
        lines.append(f"| {r['model']} | {r['device']} | {r['level']} | {r['setting']} | {r['seq_len']} "
                     f"| {r['batch_size']} | {ratio} | {r['ideal_ratio']:.2f} | {eff} | {fmt(r.get('baseline_s'))} "
                     f"| {fmt(r.get('recycled_s'))} | {mem} |")
    return "\n".join(lines) + "\n"


def ratio_table(rows: list[dict]) -> str:
    """One line per model, device, level and shape; per pair: measured ratio (efficiency)."""
    pairs = list(dict.fromkeys(r["setting"] for r in rows))
    shapes = list(dict.fromkeys((r["model"], r["device"], r["level"], r["seq_len"], r["batch_size"]) for r in rows))
    cells = {(r["model"], r["device"], r["level"], r["seq_len"], r["batch_size"], r["setting"]): r for r in rows}
    lines = ["| model | device | level | seq | batch | " + " | ".join(pairs) + " |", "|" + "---|" * (5 + len(pairs))]
    for shape in shapes:
        out = []
        for pair in pairs:
            r = cells.get((*shape, pair))
            out.append("" if r is None or r.get("measured_ratio") is None
                       else f"{r['measured_ratio']:.2f}x ({r['efficiency']:.2f})")
        model, device, level, seq, batch = shape
        lines.append(f"| {model} | {device} | {level} | {seq} | {batch} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> bool:
    """Measured ratio against sequence length, one panel per model and device, one line per setting,
    at each model's most used batch size among the step-level points."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install -r requirements-bench.txt): no plot")
        return False
    steps = [r for r in rows if r["level"] == "step" and r.get("measured_ratio") is not None]
    panels = sorted({(r["model"], r["device"]) for r in steps})
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (model, device) in zip(axes[0], panels):
        mine = [r for r in steps if r["model"] == model and r["device"] == device]
        sizes = [r["batch_size"] for r in mine]
        batch = max(set(sizes), key=sizes.count)
        for setting in sorted({r["setting"] for r in mine}):
            line = sorted((r["seq_len"], r["measured_ratio"], r["ideal_ratio"]) for r in mine
                          if r["setting"] == setting and r["batch_size"] == batch)
            if line:
                drawn = ax.plot([x for x, _, _ in line], [y for _, y, _ in line], marker="o", label=setting)
                ax.plot([x for x, _, _ in line], [i for _, _, i in line], linestyle=":",
                        color=drawn[0].get_color())
        ax.set_title(f"{model.split(':')[-1]}\n{device[:40]} (batch {batch})", fontsize=8)
        ax.set_xlabel("sequence length")
        ax.set_xscale("log", base=2)
        ax.set_ylabel("speedup (dotted: ideal)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def rebuild(bench_dir: Path) -> list[dict]:
    rows = [row for result in load_results(bench_dir) for row in rows_of(result)]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(bench_dir / "summary.csv", out.getvalue())
    speed = [r for r in rows if r["level"] != "codec"]
    codecs = [r for r in rows if r["level"] == "codec"]
    text = ("Measured ratio (efficiency = measured / ideal):\n\n" + ratio_table(speed)
            + "\nAll columns:\n\n" + markdown(speed))
    if codecs:
        text += "\nCompressed caches, read + decode of one training epoch (ratio > 1: faster than the plain cache):\n\n"
        text += codec_table(codecs)
    write_text(bench_dir / "summary.md", text)
    plot(speed, bench_dir / "ratio_vs_seq_len.png")
    return rows


def codec_table(rows: list[dict]) -> str:
    lines = ["| model | device | setting | seq | batch | plain s | codec s | speed vs plain |", "|" + "---|" * 8]
    lines += [f"| {r['model']} | {r['device']} | {r['setting']} | {r['seq_len']} | {r['batch_size']} "
              f"| {r['baseline_s']:.3g} | {r['recycled_s']:.3g} | {r['measured_ratio']:.2f}x |" for r in rows]
    return "\n".join(lines) + "\n"
