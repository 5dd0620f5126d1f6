"""Small file helpers shared by the cache builder, the data fetcher and the result writer."""

from __future__ import annotations

import codecs
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from recycling.errors import UserError

logger = logging.getLogger(__name__)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def writable_dir(path: str | Path, what: str) -> Path:
    """``path`` as a folder that exists (created if needed), checked before any long work starts."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{what} {path} cannot be used as a folder ({err.strerror or err})") from None
    if not path.is_dir():
        raise UserError(f"{what} {path} is not a folder")
    return path


def inside(root: str | Path, path: Path, what: str) -> Path:
    """``path``, refused if links inside ``root`` (a folder planted in place of one we create) make
    it resolve outside ``root``: nothing is written anywhere the user did not point us to."""
    real_root, real = Path(root).resolve(), Path(path).resolve()
    if not real.is_relative_to(real_root):
        raise UserError(f"{what} {path} leads outside {root} (to {real}) through a symbolic link; "
                        "remove the link, then rerun")
    return path


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (a power cut must not undo a publish)."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A fresh temporary path beside ``path``, renamed onto it (after fsync) when the block ends.

    The name is unique (``mkstemp``, created with O_EXCL, so never opened through a planted link) and
    two processes writing the same file never share it. If the block raises, ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # again: a writer may have replaced the file (safetensors writes 0600)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path: Path, text: str) -> None:
    """Atomic and durable: a reader (or an interrupted run, or a power cut) never sees half a file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


class Busy(UserError):
    """Another process holds the lock (raised only when not waiting)."""


@contextmanager
def locked(path: Path, what: str, wait: bool = True) -> Iterator[None]:
    """An exclusive lock on ``path`` (a small lock file, created if needed) for the block.

    The kernel drops the lock when its holder dies, so a killed process never leaves it behind.
    ``wait=False`` raises :class:`Busy` naming ``what`` and the holder's pid instead of waiting.
    """
    path = Path(path)
    writable_dir(path.parent, "the folder of the lock file")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as err:
        if path.is_symlink():  # O_NOFOLLOW: a planted link is refused, never followed
            raise UserError(f"{path} is a symbolic link; delete it, then rerun") from None
        raise UserError(f"cannot open the lock file {path} ({err.strerror or err})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            if not wait:
                raise Busy(f"{what} is in use by another process (pid {holder}); wait for it to finish") from None
            logger.info("waiting for %s, in use by another process (pid %s)", what, holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_bytes(path: Path, what: str = "data file") -> bytes:
    """The bytes of a user's file; a folder, a missing or an unreadable file is a one-line error."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a {what}")
    if not path.exists():
        raise UserError(f"missing {what}: {path}")
    try:
        return path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None


def read_lines(path: Path) -> list[str]:
    """The file's physical lines as text (a leading BOM dropped); a bad byte is reported with its line.

    Lines end at LF, CR or CRLF, as in Python's text mode, so line numbers match what editors show.
    """
    data = read_bytes(path)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    lines = []
    # No byte of a UTF-8 multi-byte sequence is \n or \r, so splitting before decoding is safe.
    for line_no, raw in enumerate(data.splitlines(), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise UserError(f"{path}:{line_no}: not valid UTF-8 (byte {raw[err.start]:#04x} "
                            f"at column {err.start + 1})") from None
    return lines


def check_plain_name(value: str, what: str, where: str | None = None) -> None:
    """Names come from configs and command lines: refuse anything that could leave its folder."""
    separators = {"/", os.sep, "\0"} | ({os.altsep} if os.altsep else set())
    if value in ("", ".", "..") or any(sep in value for sep in separators):
        prefix = f"{where}: " if where else ""
        raise UserError(f"{prefix}invalid {what} {value!r}: expected a plain name, not a path")


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
