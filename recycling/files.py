"""Small file helpers shared by the cache builder, the data fetcher and the result writer."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from recycling.errors import UserError


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text(path: Path, text: str) -> None:
    """Atomic: a reader (or an interrupted run) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def check_plain_name(value: str, what: str) -> None:
    """Names come from configs and command lines: refuse anything that could leave its folder."""
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if value in ("", ".", "..") or any(sep in value for sep in separators):
        raise UserError(f"invalid {what} '{value}': expected a plain name, not a path")


def dataset_dir(data_dir: str | Path, task: str, name: str) -> Path:
    """The folder ``<data_dir>/<task>/<name>`` of a dataset, which must exist."""
    check_plain_name(name, "dataset name")
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"data directory not found: {root} (set --data-dir or ER_DATA_DIR)")
    folder = root / task / name
    if not folder.is_dir():
        raise UserError(f"dataset '{name}' not found: no folder {folder}")
    return folder
