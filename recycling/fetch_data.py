"""Download the paper's public datasets and check them against recorded hashes.

    python -m recycling.fetch_data --out DIR [--base-url URL] [--only text_classification/chemprot ...]

Each file lands at ``DIR/<task>/<name>/<split>.txt`` (the layout ``--data-dir`` expects). A file is
written to ``<split>.txt.part``, its SHA-256 and size are checked against ``data_hashes.json``, and
only then is it renamed into place, so a failed or corrupted download never leaves a final file.
Files already present with the right hash are skipped. The files come from the paper's release,
the ``text_classification/`` and ``ner/`` folders of the allenai/EmbeddingRecycling repository (the
same files sit under ``data/`` in allenai/scibert, where bc5cdr's train and dev end in ``.conll2003``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from recycling.errors import UserError, exit_code
from recycling.files import file_sha256

logger = logging.getLogger("recycling.fetch_data")

HASHES_FILE = Path(__file__).with_name("data_hashes.json")
CHUNK = 1 << 20
TIMEOUT_S = 60


@dataclass(frozen=True)
class Entry:
    path: str  # under the base URL and under --out, e.g. "text_classification/chemprot/train.txt"
    sha256: str
    size: int

    @property
    def dataset(self) -> str:
        return self.path.rsplit("/", 1)[0]


def load_manifest(path: Path = HASHES_FILE) -> tuple[str, list[Entry]]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    entries = [Entry(name, spec["sha256"], spec["bytes"])
               for name, spec in sorted(doc["files"].items())]
    return doc["base_url"], entries


def select(entries: list[Entry], only: list[str] | None) -> list[Entry]:
    if not only:
        return entries
    known = sorted({e.dataset for e in entries})
    wanted = {name.strip("/") for name in only}
    unknown = sorted(wanted - set(known))
    if unknown:
        raise UserError(f"unknown dataset(s) for --only: {', '.join(unknown)}; known: {', '.join(known)}")
    return [e for e in entries if e.dataset in wanted]


def fetch_one(entry: Entry, out: Path, base_url: str) -> bool:
    """Make ``out/entry.path`` hold the right bytes; returns False if it already did."""
    target = out / entry.path
    if target.is_file():
        if file_sha256(target) == entry.sha256:
            logger.info("%s: present, hash ok, skipped", entry.path)
            return False
        logger.warning("%s: present with a different hash, downloading again", entry.path)
    url = f"{base_url.rstrip('/')}/{entry.path}"
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("%s: downloading %s", entry.path, url)
    digest, size = hashlib.sha256(), 0
    try:
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(part, "wb") as f:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    digest.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
        except urllib.error.HTTPError as err:
            raise UserError(f"{entry.path}: download failed: {url}: HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            raise UserError(f"{entry.path}: download failed: {url}: {reason}") from None
        actual = digest.hexdigest()
        if actual != entry.sha256:
            raise UserError(f"{entry.path}: hash mismatch for {url}: expected sha256 {entry.sha256} "
                            f"({entry.size} bytes), got {actual} ({size} bytes)")
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    logger.info("%s: ok (%d bytes)", entry.path, size)
    return True


def fetch(out: Path, base_url: str | None = None, only: list[str] | None = None) -> Path:
    default_url, entries = load_manifest()
    entries = select(entries, only)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out is not a directory: {out}")
    downloaded = sum(fetch_one(e, out, base_url or default_url) for e in entries)
    logger.info("%d file(s) downloaded, %d already present; all %d match data_hashes.json",
                downloaded, len(entries) - downloaded, len(entries))
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m recycling.fetch_data",
                                description="Download the public datasets and verify their SHA-256.")
    p.add_argument("--out", required=True, type=Path, help="root folder to fill (use it as --data-dir)")
    p.add_argument("--base-url", help="folder URL holding <task>/<name>/<file> "
                                      "(default: the paper's release on GitHub; file:// works)")
    p.add_argument("--only", nargs="+", metavar="TASK/NAME",
                   help="datasets to fetch, e.g. text_classification/chemprot ner/bc5cdr (default: all)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return exit_code(lambda: print(fetch(args.out, args.base_url, args.only)))


if __name__ == "__main__":
    sys.exit(main())
