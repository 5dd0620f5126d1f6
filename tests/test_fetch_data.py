"""``python -m recycling.fetch_data`` offline: a file:// base URL stands in for the SciBERT data folder."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recycling.fetch_data import HASHES_FILE

ROOT = Path(__file__).resolve().parents[1]
DATASET = "text_classification/sciie-relation-extraction"
SPLITS = ("train", "dev", "test")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recycling.fetch_data", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture
def source(shared_data: Path, tmp_path: Path) -> Path:
    """A tree laid out like the download URLs, holding one dataset."""
    root = tmp_path / "source"
    shutil.copytree(shared_data / DATASET, root / DATASET)
    return root


def test_manifest_matches_shared_data(shared_data: Path):
    files = json.loads(HASHES_FILE.read_text())["files"]
    on_disk = sorted(p.relative_to(shared_data).as_posix() for p in shared_data.glob("*/*/*.txt"))
    assert sorted(files) == on_disk
    for name in (f"{DATASET}/dev.txt", "ner/bc5cdr/test.txt"):
        data = (shared_data / name).read_bytes()
        assert files[name]["sha256"] == hashlib.sha256(data).hexdigest()
        assert files[name]["bytes"] == len(data)


def test_download_then_skip(shared_data: Path, source: Path, tmp_path: Path):
    out = tmp_path / "out"
    first = run_cli("--out", str(out), "--base-url", source.as_uri(), "--only", DATASET)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == str(out)
    for split in SPLITS:
        assert (out / DATASET / f"{split}.txt").read_bytes() == (shared_data / DATASET / f"{split}.txt").read_bytes()
    assert not list(out.rglob("*.part"))

    # The source disappears: a second run must not need it.
    shutil.rmtree(source)
    again = run_cli("--out", str(out), "--base-url", source.as_uri(), "--only", DATASET)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("skipped") == len(SPLITS)


def test_corrupted_source_leaves_nothing(source: Path, tmp_path: Path):
    bad = source / DATASET / "dev.txt"
    bad.write_bytes(bad.read_bytes()[:-10] + b"corrupted\n")
    out = tmp_path / "out"
    result = run_cli("--out", str(out), "--base-url", source.as_uri(), "--only", DATASET)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    expected = json.loads(HASHES_FILE.read_text())["files"][f"{DATASET}/dev.txt"]["sha256"]
    assert message.startswith("error: ") and f"{DATASET}/dev.txt" in message
    assert expected in message and hashlib.sha256(bad.read_bytes()).hexdigest() in message
    assert not (out / DATASET / "dev.txt").exists()
    assert not list(out.rglob("*.part"))


def test_missing_file_is_one_line_error(source: Path, tmp_path: Path):
    (source / DATASET / "test.txt").unlink()
    out = tmp_path / "out"
    result = run_cli("--out", str(out), "--base-url", source.as_uri(), "--only", DATASET)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {DATASET}/test.txt: download failed")
    assert not (out / DATASET / "test.txt").exists()
    assert not list(out.rglob("*.part"))


def test_unknown_dataset(tmp_path: Path):
    result = run_cli("--out", str(tmp_path / "out"), "--only", "text_classification/nope")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown dataset(s) for --only: text_classification/nope")
