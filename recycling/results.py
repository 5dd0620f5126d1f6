"""Result files with their provenance, and the summary table rebuilt from all of them."""

from __future__ import annotations

import csv
import dataclasses
import importlib.metadata
import io
import json
import logging
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from recycling.config import BASELINE_OF, CACHED_MODES, SOURCE_MODES
from recycling.errors import UserError
from recycling.files import locked, write_text
from recycling.metrics import mean_std
from recycling.tasks import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ".locks"  # lock files of experiments and of the summary, under the results folder
logger = logging.getLogger(__name__)
PACKAGES = ("torch", "transformers", "adapters", "peft", "numpy", "scikit-learn", "seqeval", "embedding-recycling")
SUMMARY_COLUMNS = ("task", "dataset", "model", "cut_layer", "mode", "n_seeds", "metric", "test_mean",
                   "test_std", "dev_mean", "train_epoch_s", "train_speedup", "infer_s", "infer_speedup",
                   "cache_build_s", "cache_bytes", "codec", "bytes_per_token", "source_model", "device", "experiment")


def git_sha() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        # Result files are rewritten by the runs themselves: only changes elsewhere make the code dirty.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def portable_path(path: str) -> str:
    """A path inside the repository relative to its root, so result files read the same anywhere."""
    resolved = Path(path).resolve()
    return resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else path


def environment(device) -> dict:
    """Where and with what a result was computed: code, device, Python and package versions, time."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "git_sha": git_sha(),  # at the start of this invocation; each run records its own
        "device": device_name(device),
        "python": platform.python_version(),
        "packages": versions,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def provenance(config, sources: dict, device) -> dict:
    return {
        "config": dataclasses.asdict(config),
        "config_sources": {k: v if v == "--set" else portable_path(v) for k, v in sources.items()},
        "seeds": list(config.seeds),
        **environment(device),
    }


def run_device(result: dict, run: dict) -> str:
    """Runs record their device; files written before they did, once for the whole file."""
    return run.get("device", result["provenance"]["device"])


def mean_seconds(runs: list[dict]) -> tuple[float, float]:
    """Mean training-epoch seconds over every epoch of ``runs``, and mean inference seconds per run."""
    return (mean_std([e["train_seconds"] for r in runs for e in r["history"]["epochs"]])[0],
            mean_std([r["inference_seconds"] for r in runs])[0])


def mode_row(result: dict, mode: str, device: str, runs: list[dict]) -> dict:
    """The summary row of ``runs`` of ``mode`` on ``device``, read with ``result``'s config and cache."""
    config = result["provenance"]["config"]
    metric = config["metric"]
    test_mean, test_std = mean_std([r["test"][metric] for r in runs])
    dev_mean, _ = mean_std([r["dev"][metric] for r in runs])
    epoch_s, infer_s = mean_seconds(runs)
    row = {
        "task": config["task"], "dataset": config["dataset"], "model": config["model"],
        "cut_layer": "" if mode in SOURCE_MODES else config["cut_layer"], "mode": mode, "n_seeds": len(runs), "metric": metric,
        "test_mean": round(100 * test_mean, 2),
        "test_std": "" if test_std is None else round(100 * test_std, 2),
        "dev_mean": round(100 * dev_mean, 2), "train_epoch_s": round(epoch_s, 2),
        "train_speedup": "", "infer_s": round(infer_s, 3), "infer_speedup": "",
        "cache_build_s": "", "cache_bytes": "", "codec": "", "bytes_per_token": "",
        "source_model": config.get("source_model") or "" if mode in SOURCE_MODES else "", "device": device,
        "experiment": result["experiment"],
    }
    cache = result.get("source_cache") if mode in SOURCE_MODES else result.get("cache") if mode in CACHED_MODES else None
    if cache:
        row["cache_build_s"] = cache["build_seconds"]
        row["cache_bytes"] = cache["bytes"]
        # Files from before codecs: the cache dtype, and no token count to divide by.
        row["codec"] = cache.get("codec", cache.get("fingerprint", {}).get("dtype", ""))
        if cache.get("tokens"):
            row["bytes_per_token"] = round(cache["bytes"] / cache["tokens"], 1)
    return row


def summary_rows(result: dict) -> list[dict]:
    """One row per mode and device; speedups pair a mode with its baseline on the same device."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for mode, runs in result["runs"].items():
        for run in runs:
            groups.setdefault((mode, run_device(result, run)), []).append(run)
    rows = {key: mode_row(result, *key, runs) for key, runs in groups.items()}
    for (mode, device), row in rows.items():
        baseline_runs = groups.get((BASELINE_OF.get(mode), device))
        if baseline_runs is None:
            continue
        # Only the seeds both sides ran: those ran in one seed loop on one machine, with the same data
        # and batch size. A seed added later for one side alone (--set "modes=[lora]") may have run
        # in another session, when the machine was faster or slower.
        mine = groups[mode, device]
        seeds = {r["seed"] for r in mine} & {r["seed"] for r in baseline_runs}
        if seeds:
            epoch_s, infer_s = mean_seconds([r for r in mine if r["seed"] in seeds])
            base_epoch_s, base_infer_s = mean_seconds([r for r in baseline_runs if r["seed"] in seeds])
            row["train_speedup"] = round(base_epoch_s / epoch_s, 2)
            row["infer_speedup"] = round(base_infer_s / infer_s, 2)
    return list(rows.values())


def read_result(path: Path) -> dict:
    """A result file of this project, or a ``UserError`` saying why ``path`` is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not readable JSON ({type(err).__name__}: {err})") from None
    try:
        config = data["provenance"]["config"]
        ok = (isinstance(data["experiment"], str) and isinstance(data["runs"], dict)
              and all(isinstance(config[k], (str, int)) for k in ("task", "dataset", "model", "cut_layer", "metric"))
              and all(isinstance(runs, list) and all(_is_run(r) for r in runs) for runs in data["runs"].values()))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise UserError(f"{path} is not a result file of this project (experiment, provenance.config and "
                        "complete runs expected)")
    return data


def _is_run(run) -> bool:
    """A finished run as the runner writes it (a run missing any of this would be skipped as done)."""
    return (isinstance(run, dict) and type(run.get("seed")) is int
            and all(isinstance(run.get(k), dict) for k in ("dev", "test", "history"))
            and isinstance(run["history"].get("epochs"), list) and isinstance(run.get("inference_seconds"), (int, float)))


def rebuild_summary(results_dir: Path) -> list[dict]:
    """Rewrite ``summary.csv`` and ``summary.md`` from every result file under ``results_dir``.

    A file that is not a readable result (truncated, foreign) is left out with a warning naming it,
    so one bad file never stops every later run from writing its summary.
    """
    with locked(results_dir / LOCKS / "summary.lock", f"the summary in {results_dir}"):
        return _rebuild_summary(results_dir)


def all_results(results_dir: Path) -> list[tuple[dict, list[dict]]]:
    """Every result file under ``results_dir`` with its summary rows; unreadable files are left out
    with a warning naming them."""
    found = []
    for task in REGISTRY:
        for path in sorted(results_dir.glob(f"{task}/*/*.json")):
            try:
                result = read_result(path)
                found.append((result, summary_rows(result)))
            except UserError as err:
                logger.warning("left out of the summary: %s", err)
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
                logger.warning("left out of the summary: %s has runs this version cannot read (%s: %s)",
                               path, type(err).__name__, err)
    return found


def all_summary_rows(results_dir: Path) -> list[dict]:
    """The summary rows of every result file under ``results_dir`` (see ``all_results``)."""
    return [row for _, rows in all_results(results_dir) for row in rows]


def _rebuild_summary(results_dir: Path) -> list[dict]:
    rows = all_summary_rows(results_dir)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(results_dir / "summary.csv", table.getvalue())
    lines = ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in SUMMARY_COLUMNS) + " |" for r in rows]
    write_text(results_dir / "summary.md", "\n".join(lines) + "\n")
    return rows
