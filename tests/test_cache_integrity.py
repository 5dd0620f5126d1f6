"""A cache that is silently wrong must never be trained on.

Each test damages a cache on disk, or makes its build crash, race another build or run out of
room, and checks that the result is either a one-line error naming the file or a cache identical
to an uninterrupted build. Every fault is recorded for the README's fault table.
"""

import errno
import hashlib
import json
import logging
import os
import queue
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cache_builder import ActivationCache, CacheInput, build_cache
from cache_builder import __main__ as cli
from cache_builder.store import ARRAYS, MANIFEST
from recycling.errors import UserError
from tests import faults
from tests import test_cache_builder

ROOT = Path(__file__).resolve().parents[1]
tiny = test_cache_builder.tiny  # the fixture: a tiny random BERT and the toy dataset, tokenized
_build = test_cache_builder._build


def _stable(message: str) -> str:
    """The free space on this machine changes from run to run; the README table must not."""
    return re.sub(r"[\d.]+ [KMG]B free", "<free> free", message)


def _error(excinfo) -> str:
    return str(excinfo.value)


# --- damage to a built cache ------------------------------------------------------------------

def _flip_byte(c: Path):
    path = c / "train" / "hidden.npy"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(rel: str, nbytes: int):
    def damage(c: Path):
        path = c / rel
        with open(path, "rb+") as f:
            f.truncate(path.stat().st_size - nbytes)
    return damage


def _swap_hidden(c: Path):
    a, b = c / "train" / "hidden.npy", c / "dev" / "hidden.npy"
    tmp = c / "swap"
    os.replace(a, tmp)
    os.replace(b, a)
    os.replace(tmp, b)


def _edit_offsets(edit):
    def damage(c: Path):
        path = c / "dev" / "offsets.npy"
        offsets = np.load(path)
        edit(offsets)
        np.save(path, offsets)  # same length, so the same size as the manifest records
    return damage


def _swap_two(offsets):
    offsets[3], offsets[4] = offsets[4], offsets[3]


def _shift_end(offsets):
    offsets[-1] += 1


def _manifest(text_of):
    def damage(c: Path):
        path = c / MANIFEST
        path.write_text(text_of(path.read_text()))
    return damage


def _drop_keys(text: str) -> str:
    m = json.loads(text)
    del m["splits"], m["hidden_size"]
    return json.dumps(m)


# (fault as the README table shows it, damage, what the error must say)
CHEAP_FAULTS = [
    ("`train/hidden.npy` truncated by 64 bytes", _truncate("train/hidden.npy", 64),
     r"train/hidden\.npy has \d+ bytes, the manifest records \d+"),
    ("`dev/offsets.npy` truncated by 8 bytes", _truncate("dev/offsets.npy", 8),
     r"dev/offsets\.npy has \d+ bytes, the manifest records"),
    ("`dev/hidden.npy` deleted", lambda c: (c / "dev" / "hidden.npy").unlink(), r"dev/hidden\.npy is missing"),
    ("split folder `test/` deleted", lambda c: shutil.rmtree(c / "test"), r"split folder .*/test is missing"),
    ("`train/hidden.npy` and `dev/hidden.npy` swapped", _swap_hidden, r"train/hidden\.npy has \d+ bytes"),
    # Cut where the text is the same in every run (later lines hold paths and timings).
    ("`manifest.json` cut off after 20 characters (invalid JSON)", _manifest(lambda t: t[:20]),
     r"manifest\.json is unreadable \("),
    ("`manifest.json` holds a JSON list", _manifest(lambda t: "[1, 2]"), r"manifest\.json is a JSON list"),
    ("`manifest.json` lacks `splits` and `hidden_size`", _manifest(_drop_keys),
     r"manifest\.json is malformed: no 'splits' object; no integer 'hidden_size'"),
    ("`dev/offsets.npy` not monotone (two entries swapped, same size)", _edit_offsets(_swap_two),
     r"dev/offsets\.npy is not non-decreasing \(feature 3"),
    ("`dev/offsets.npy` ends one row past `dev/hidden.npy`", _edit_offsets(_shift_end),
     r"dev/offsets\.npy ends at row \d+, but .*dev/hidden\.npy has \d+ rows"),
]


@pytest.mark.parametrize("fault,damage,expected", CHEAP_FAULTS, ids=[f[0] for f in CHEAP_FAULTS])
def test_damaged_cache_is_refused_on_open_naming_the_file(tiny, fault, damage, expected):
    cache_dir = tiny["root"] / "c"
    _build(tiny, cache_dir)
    damage(cache_dir)
    with pytest.raises(UserError, match=expected) as err:
        ActivationCache(cache_dir)
    assert str(err.value).endswith(f"delete {cache_dir} and rerun to rebuild the cache")
    # The builder reuses a cache only through that check, so a run never trains on it.
    with pytest.raises(UserError, match=expected):
        _build(tiny, cache_dir)
    faults.record("cache", fault, _error(err), tiny["root"])


def test_flipped_byte_passes_the_cheap_check_and_verify_names_the_file(tiny, capsys):
    cache_dir = tiny["root"] / "c"
    cache = _build(tiny, cache_dir)
    assert cache.verify() is True
    assert cli.main(["verify", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {cache_dir}: train (24 features, ") and out.count("\n") == 1
    assert "every array file matches its SHA-256" in out

    _flip_byte(cache_dir)
    ActivationCache(cache_dir)  # sizes and structure are intact: the cheap check cannot see it
    with pytest.raises(UserError, match=r"train/hidden\.npy is corrupt: its SHA-256 differs") as err:
        ActivationCache(cache_dir).verify()
    # The command: exit 2 with the one error line, no traceback.
    run = subprocess.run([sys.executable, "-m", "cache_builder", "verify", str(cache_dir)],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == f"error: {err.value}\n"
    faults.record("cache", "one byte flipped in the middle of `train/hidden.npy`",
                  f"opening passes (sizes and structure intact); `verify`: {err.value}", tiny["root"])


def test_cache_without_checksums_opens_and_verify_says_it_cannot_check(tiny, capsys, caplog):
    cache_dir = tiny["root"] / "c"
    _build(tiny, cache_dir)
    manifest = json.loads((cache_dir / MANIFEST).read_text())
    for record in manifest["splits"].values():
        del record["files"]  # as a cache of this format built before checksums were recorded
    (cache_dir / MANIFEST).write_text(json.dumps(manifest))
    assert ActivationCache(cache_dir).verify() is False
    assert "records no checksums" in caplog.text
    assert cli.main(["verify", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert "structure only: no checksums recorded" in out
    faults.record("cache", "cache built before checksums were recorded (no `files` in the manifest)",
                  "opens; `verify` exits 0 with " + out.split("; ", 1)[1].strip(), tiny["root"])


def test_missing_cache_and_unknown_split_are_one_line_errors(tiny, capsys):
    assert cli.main(["verify", str(tiny["root"] / "nothing")]) == 2
    assert capsys.readouterr().err == f"error: no complete cache at {tiny['root'] / 'nothing'} (no manifest.json)\n"
    cache = _build(tiny, tiny["root"] / "c")
    with pytest.raises(UserError, match="has no split 'validation' \\(it has train, dev, test\\)"):
        cache.split("validation")


def test_manifest_records_size_and_sha256_of_every_array(tiny):
    cache = _build(tiny, tiny["root"] / "c")
    for name, record in cache.manifest["splits"].items():
        assert set(record["files"]) == set(ARRAYS)
        for array, entry in record["files"].items():
            data = (cache.path / name / array).read_bytes()
            assert entry["bytes"] == len(data)
            assert entry["sha256"] == hashlib.sha256(data).hexdigest()


# --- what lies at the cache's path before a build ----------------------------------------------

def test_folder_without_manifest_at_the_target_is_refused_not_replaced(tiny):
    cache_dir = tiny["root"] / "c"
    cache_dir.mkdir()
    (cache_dir / "notes.txt").write_text("someone's files")
    with pytest.raises(UserError) as err:
        _build(tiny, cache_dir)
    assert str(err.value) == (f"{cache_dir} exists but is not a complete cache (no manifest.json): "
                              "delete it or move it away, then rerun")
    assert (cache_dir / "notes.txt").read_text() == "someone's files"
    faults.record("cache", "a folder without `manifest.json` (someone's files) at the cache's path",
                  _error(err), tiny["root"])
    empty = tiny["root"] / "empty"
    empty.mkdir()
    assert len(_build(tiny, empty).split("dev")) == 8  # an empty folder is simply filled


def test_a_link_planted_at_the_temporary_build_folder_is_never_written_through(tiny):
    cache_dir, elsewhere = tiny["root"] / "c", tiny["root"] / "elsewhere"
    elsewhere.mkdir()
    cache_dir.with_name("c.partial").symlink_to(elsewhere)
    with pytest.raises(UserError, match="is a symbolic link") as err:
        _build(tiny, cache_dir)
    assert not any(elsewhere.iterdir()) and not cache_dir.exists()
    faults.record("cache", "a symbolic link planted at the build's temporary folder `<cache>.partial`",
                  _error(err), tiny["root"])


def _arrays(cache_dir: Path) -> dict:
    return {f"{split.name}/{a}": (split / a).read_bytes()
            for split in sorted(p for p in cache_dir.iterdir() if p.is_dir()) for a in ARRAYS}


def test_partial_build_with_unreadable_fingerprint_is_discarded_and_rebuilt(tiny, caplog):
    reference = _arrays(_build(tiny, tiny["root"] / "ref").path)
    cache_dir = tiny["root"] / "c"
    partial = tiny["root"] / "c.partial"
    (partial / "train").mkdir(parents=True)
    (partial / "train" / "hidden.npy").write_bytes(b"leftover")
    (partial / "fingerprint.json").write_bytes(b"\x00\xff{not json")
    cache = _build(tiny, cache_dir)
    assert "discarding unfinished cache" in caplog.text and "unreadable" in caplog.text
    assert _arrays(cache.path) == reference
    faults.record("cache", "`<cache>.partial/fingerprint.json` unreadable (binary garbage)",
                  "warning, the unfinished build is discarded; rebuilt arrays byte-identical to a clean build",
                  tiny["root"])


def test_finished_split_damaged_in_an_unfinished_build_is_rebuilt(tiny, monkeypatch, caplog):
    from cache_builder import build as build_module

    reference = _arrays(_build(tiny, tiny["root"] / "ref").path)
    cache_dir = tiny["root"] / "c"
    real = build_module._build_split

    def stop_after_first(partial, name, *args):
        if name != "train":
            raise KeyboardInterrupt
        return real(partial, name, *args)

    monkeypatch.setattr(build_module, "_build_split", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        _build(tiny, cache_dir)
    monkeypatch.setattr(build_module, "_build_split", real)
    _truncate("train/hidden.npy", 100)(tiny["root"] / "c.partial")
    cache = _build(tiny, cache_dir)
    assert "rebuilding split train" in caplog.text
    assert _arrays(cache.path) == reference
    faults.record("cache", "a finished split of an unfinished build truncated before the rerun",
                  "warning, that split is rebuilt; arrays byte-identical to a clean build", tiny["root"])


# --- no room on the disk ---------------------------------------------------------------------

def _no_partial_manifest(cache_dir: Path) -> bool:
    return not (cache_dir / MANIFEST).exists() and not cache_dir.with_name(cache_dir.name + ".partial").joinpath(
        MANIFEST).exists()


def test_file_size_limit_during_a_real_build_is_a_one_line_error(tiny, caplog):
    cache_dir = tiny["root"] / "cli"
    args = [sys.executable, "-m", "cache_builder", "--dataset", "toy", "--data-dir", str(tiny["root"] / "data"),
            "--model", tiny["path"], "--cut-layer", "2", "--max-length", "64", "--cache-dir", str(cache_dir)]

    def limit_file_size():
        # Files may not grow past 8 KB: the small files fit, the first split's hidden.npy does not.
        # SIGXFSZ ignored, so the write fails with EFBIG instead of killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    limited = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, preexec_fn=limit_file_size)
    assert limited.returncode == 2, limited.stderr
    last = limited.stderr.splitlines()[-1]
    assert "Traceback" not in limited.stderr
    assert re.fullmatch(rf"error: not enough disk space for the cache at {re.escape(str(cache_dir))}: need [\d.]+ KB "
                        r"for split train, [\d.]+ [KMG]B free \(File too large\)", last), last
    assert _no_partial_manifest(cache_dir) and not cache_dir.exists()
    faults.record("cache", "file size limit (`RLIMIT_FSIZE` 8 KB) hit by a real build: EFBIG",
                  _stable(last.removeprefix("error: ")), tiny["root"])

    # With room again, the same cache (built here, to spare starting another interpreter) completes.
    with caplog.at_level(logging.INFO, logger="cache_builder"):
        assert _build(tiny, cache_dir).verify()
    assert "resuming unfinished cache" in caplog.text  # the unfinished build was for these very inputs


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EOPNOTSUPP])
def test_full_disk_is_found_before_writing_and_a_later_build_completes(tiny, monkeypatch, code):
    cache_dir = tiny["root"] / "c"

    def no_room(fd, offset, length):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "posix_fallocate", no_room)
    if code == errno.EOPNOTSUPP:
        # A filesystem that cannot preallocate: the builder compares with the free space instead.
        monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    free = r"1\.0 KB" if code == errno.EOPNOTSUPP else r"[\d.]+ [KMG]B"
    with pytest.raises(UserError, match=rf"not enough disk space for the cache at .*: need [\d.]+ KB for split "
                                        rf"train, {free} free \(No space left on device\)") as err:
        _build(tiny, cache_dir)
    assert _no_partial_manifest(cache_dir) and not cache_dir.exists()
    assert not (tiny["root"] / "c.partial" / "train.tmp").exists()  # what was reserved is given back
    how = "`posix_fallocate` fails with ENOSPC" if code == errno.ENOSPC else \
        "`posix_fallocate` unsupported (EOPNOTSUPP) and 1 KB free"
    faults.record("cache", f"disk full: {how}", _stable(_error(err)), tiny["root"])

    monkeypatch.undo()
    assert _build(tiny, cache_dir).verify()


# --- builds in other processes: killed at random moments, or two at once -----------------------

def crash_inputs() -> dict:
    """Three splits of random token ids, enough batches (of 4) that a build takes a second or two."""
    rng = np.random.default_rng(0)
    return {name: CacheInput([[2] + rng.integers(5, 100, size=rng.integers(8, 48)).tolist() + [3]
                              for _ in range(n)])
            for name, n in (("train", 1600), ("dev", 800), ("test", 800))}


def serve(model_path: str) -> None:
    """A child process that imports everything once, then forks one builder per ``build DIR`` line.

    Importing torch and transformers takes seconds; a fork takes milliseconds, so every kill lands
    in a build, not in an interpreter starting. The server itself runs no torch operation, so no
    thread pool is forked half-used; each builder loads the model itself.
    """
    import logging
    import traceback

    import torch

    from recycling import encoders

    logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s: %(message)s")

    def say(line: str) -> None:
        os.write(1, (line + "\n").encode())  # one write per line: lines of several processes never mix

    say("ready")
    while line := sys.stdin.readline():
        command, arg = line.split()
        if command == "wait":
            _, status = os.waitpid(int(arg), 0)
            say(f"exited {arg} {os.waitstatus_to_exitcode(status)}")
            continue
        pid = os.fork()
        if pid:
            say(f"forked {pid}")
            continue
        code = 1
        try:
            # One thread: with two cores shared with the test (and whatever else runs), OpenMP's
            # spinning threads make a build's duration vary tenfold, and the kills are timed by it.
            torch.set_num_threads(1)
            model, _ = encoders.load_encoder(model_path)
            inputs = crash_inputs()
            say(f"started {os.getpid()}")
            started = time.perf_counter()
            build_cache(arg, model_path, model, 2, inputs, batch_size=4)
            say(f"done {os.getpid()} {time.perf_counter() - started:.3f}")
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)


class Builders:
    """The test's side of :func:`serve`."""

    def __init__(self, model_path: Path, log: Path):
        self.log = log
        code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.test_cache_integrity import serve; " \
               f"serve({str(model_path)!r})"
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, text=True, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=open(log, "ab"))
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(x.strip()) for x in self.proc.stdout], daemon=True).start()
        self.pending: list[str] = []
        self.expect("ready", timeout=120)

    def expect(self, *words: str, timeout: float = 60) -> list[str]:
        """The next line (from the server or any builder) that starts with ``words``, as its fields."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.pending:
                fields = line.split()
                if fields[:len(words)] == list(words):
                    self.pending.remove(line)
                    return fields
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                pytest.fail(f"no '{' '.join(words)}' from the builders; log:\n{self.log.read_text()[-3000:]}")
            try:
                self.pending.append(self.lines.get(timeout=remaining))
            except queue.Empty:
                pass

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def build(self, cache_dir: Path) -> str:
        self.send(f"build {cache_dir}")
        return self.expect("forked")[1]

    def wait(self, pid: str) -> int:
        self.send(f"wait {pid}")
        return int(self.expect("exited", pid)[2])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def builders(tmp_path_factory):
    from tests.helpers import save_tiny_bert

    root = tmp_path_factory.mktemp("builders")
    server = Builders(save_tiny_bert(root / "model"), root / "builders.log")
    # The uninterrupted build every other result must equal, and how long a build takes.
    pid = server.build(root / "reference")
    server.expect("started", pid)
    seconds = float(server.expect("done", pid)[2])
    assert server.wait(pid) == 0
    server.reference, server.seconds, server.root = root / "reference", seconds, root
    yield server
    server.close()


def _same_as_reference(cache_dir: Path, reference: Path) -> None:
    assert _arrays(cache_dir) == _arrays(reference)
    assert json.loads((cache_dir / MANIFEST).read_text())["fingerprint"] == \
        json.loads((reference / MANIFEST).read_text())["fingerprint"]
    assert ActivationCache(cache_dir).verify()


def test_build_killed_at_random_moments_resumes_to_identical_arrays(builders, tmp_path):
    assert 0.3 < builders.seconds < 20, builders.seconds  # long enough for kills to land inside it
    cache_dir = tmp_path / "c"
    partial = tmp_path / "c.partial"
    rng = random.Random(20240607)
    kills, landed, missed, mid_split, resumed = 10, 0, 0, 0, 0
    while landed < kills:
        shutil.rmtree(cache_dir, ignore_errors=True)
        pid = builders.build(cache_dir)
        builders.expect("started", pid)
        time.sleep(rng.uniform(0.02, 0.85) * builders.seconds)
        os.kill(int(pid), signal.SIGKILL)
        if builders.wait(pid) == 0:
            # This build ran faster than the reference (the machine is shared): the kill came too
            # late to test anything, so it does not count; later moments are drawn over its time.
            builders.seconds = min(builders.seconds, float(builders.expect("done", pid)[2]))
            missed += 1
            assert missed <= 10, "builds keep finishing before the kill: the timing is off"
            continue
        landed += 1
        assert not (cache_dir / MANIFEST).exists()  # killed before it finished, never looks complete
        mid_split += any(partial.glob("*.tmp"))  # a split was being written when the kill landed
        resumed += any(p.is_dir() and not p.name.endswith(".tmp") for p in partial.glob("*"))

        pid = builders.build(cache_dir)
        builders.expect("done", pid)
        assert builders.wait(pid) == 0
        assert not partial.exists() and not (tmp_path / "c.lock").exists()
        _same_as_reference(cache_dir, builders.reference)
    assert mid_split >= 3, mid_split
    assert resumed >= 1, resumed  # some reruns kept finished splits
    faults.record("cache", "build SIGKILLed at random moments (seeded delays over a build), then rerun",
                  f"rerun resumed; arrays byte-identical to an uninterrupted build ({kills} of {kills} kills)",
                  tmp_path)


def test_two_processes_building_the_same_cache_at_once(builders, tmp_path):
    cache_dir = tmp_path / "shared"
    first, second = builders.build(cache_dir), builders.build(cache_dir)
    for pid in (first, second):
        builders.expect("done", pid)
        assert builders.wait(pid) == 0
    _same_as_reference(cache_dir, builders.reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]  # no lock file or partial left beside it
    cache = ActivationCache(cache_dir)
    for name in ("train", "dev", "test"):
        split = cache.split(name)
        assert all(np.abs(split.rows(i)).max() > 0 for i in range(len(split)))  # no row left unwritten
    log = builders.log.read_text()
    assert log.count(f"built cache {cache_dir} ") == 1  # one built, the other reused its result
    assert f"reusing cache {cache_dir}" in log
    faults.record("cache", "two processes build the same cache at once",
                  "one builds, the other waits for the lock and reuses it; arrays byte-identical to a "
                  "single build", tmp_path)

