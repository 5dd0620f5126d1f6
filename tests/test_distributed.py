"""Scale-out: a cache built by several processes is the cache one process builds, byte for byte."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cache_builder import build as build_module
from cache_builder.build import _allocate
from cache_builder.store import ARRAYS
from recycling import encoders
from recycling.distributed import Processes
from recycling.errors import UserError
from tests import faults
from tests.helpers import save_tiny_bert, write_toy_dataset

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Alone(Processes):
    """One of several processes, run by itself: it never waits, and sees only what it finds."""

    def wait(self) -> None:
        pass

    def share(self, value):
        return value


def cache_files(cache_dir: Path) -> dict[str, bytes]:
    """Every file of a cache but its manifest (which holds the build's time and date)."""
    return {str(p.relative_to(cache_dir)): p.read_bytes() for p in sorted(cache_dir.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


@pytest.fixture
def setup(tmp_path):
    model = save_tiny_bert(tmp_path / "model")
    write_toy_dataset(tmp_path / "data", n_train=40)
    return model, tmp_path


def build_command(model, tmp_path, cache_root):
    return ["-m", "cache_builder", "--dataset", "toy", "--model", str(model), "--cut-layer", "2",
            "--data-dir", str(tmp_path / "data"), "--cache-root", str(cache_root), "--batch-size", "4",
            "--max-length", "24"]


def test_two_processes_build_the_one_process_cache_byte_for_byte(setup):
    model, tmp_path = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    one = subprocess.run([sys.executable, *build_command(model, tmp_path, tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    # two CPU processes joined with gloo, as `accelerate launch` starts them (through torchrun)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *build_command(model, tmp_path, tmp_path / "two")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("two/") == 1  # only the main process reports the cache
    (first,), (second,) = (list((tmp_path / name).rglob("manifest.json")) for name in ("one", "two"))
    assert first.parent.name == second.parent.name  # the same fingerprint, so the same folder
    assert cache_files(first.parent) == cache_files(second.parent)
    assert sorted(p.name for p in (tmp_path / "two").rglob("*") if p.name.startswith(("done-", "layout"))) == []


def test_a_build_resumes_with_the_rows_each_process_finished(setup, monkeypatch):
    model_path, tmp_path = setup
    model, tokenizer = encoders.load_encoder(str(model_path))
    inputs = {"train": build_module.CacheInput([tokenizer(f"text number {i}" * (1 + i % 3))["input_ids"]
                                                for i in range(30)])}
    build = lambda path, **kw: build_module.build_cache(path, str(model_path), model, 2, inputs,  # noqa: E731
                                                       batch_size=4, **kw)
    reference = build(tmp_path / "reference")

    # process 1 of 2 finished its share of the split, then the job was stopped
    target = tmp_path / "resumed"
    partial = target.with_name("resumed.partial")
    fp = build_module.fingerprint(str(model_path), encoders.lower_part(model, 2), 2, "float16", inputs)
    partial.mkdir()
    build_module.write_json(partial / "fingerprint.json", fp)
    lengths = [len(r) for r in inputs["train"].input_ids]
    _allocate(partial / "train.tmp", lengths, 32, "float16", 2)
    lower = encoders.lower_part(model, 2)
    build_module._build_split(partial, "train", inputs["train"], lower, 0, "float16", 4, "cpu", None,
                              Alone(rank=1, world=2))
    assert (partial / "train.tmp" / "done-1-of-2").exists()

    # resumed by two processes: the main process computes only its own batches (every other one)
    computed = []
    real = build_module._run_lower
    monkeypatch.setattr(build_module, "_run_lower", lambda *a: (computed.append(a[2]), real(*a))[1])
    resumed = build(target, procs=Alone(rank=0, world=2))
    assert len(computed) == 4  # 8 batches of 4 features, dealt out in turn
    assert cache_files(resumed.path) == cache_files(reference.path)
    faults.record("cache", "a 2-process build stopped after process 1 wrote its share of a split, then rerun",
                  f"resumed: only process 0's {len(computed)} of 8 batches recomputed; every file equals the "
                  "one-process cache byte for byte")

    # a resume by another number of processes starts the split again
    other = tmp_path / "other"
    partial = other.with_name("other.partial")
    partial.mkdir()
    build_module.write_json(partial / "fingerprint.json", fp)
    _allocate(partial / "train.tmp", lengths, 32, "float16", 2)
    (partial / "train.tmp" / "done-0-of-2").touch()
    computed.clear()
    assert cache_files(build(other).path) == cache_files(reference.path)
    assert len(computed) == 8
    assert all((reference.path / "train" / a).exists() for a in ARRAYS)


def test_data_parallel_training_takes_the_one_process_steps(tmp_path):
    """Without dropout, two processes sharing every batch train exactly the one-process model."""
    import json

    model = save_tiny_bert(tmp_path / "model", dropout=0.0)
    write_toy_dataset(tmp_path / "data", n_train=42)  # the last batch (2 features) has one for each process
    config = tmp_path / "exp.yaml"
    config.write_text(
        f"base: {ROOT / 'HyperparameterSelection' / 'text_classification' / 'defaults.yaml'}\n"
        f"model: {model}\ncut_layer: 2\nmax_epochs: 2\nbatch_size: 8\neval_batch_size: 4\nwarmup_steps: 0\n"
        "max_length: 24\ndataset: toy\nmodes: [semi_frozen, full]\nhead_dropout: 0.0\n"
        "learning_rate: {full: 1.0e-3, semi_frozen: 1.0e-3}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    results = {}
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]  # a free local port
    for name, launch in (("one", []), ("two", torchrun)):
        script = [str(ROOT / "TextClassificationScripts" / "run_experiment.py"), str(config), "--data-dir",
                  str(tmp_path / "data"), "--results-dir", str(tmp_path / name), "--cache-root",
                  str(tmp_path / "caches"), "--checkpoint-dir", str(tmp_path / f"ckpt-{name}")]
        done = subprocess.run([sys.executable, *launch, *script], env=env, capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        results[name] = json.loads((tmp_path / name / "text_classification" / "toy" / "exp.json").read_text())
    for mode in ("semi_frozen", "full"):
        one, two = results["one"]["runs"][mode][0], results["two"]["runs"][mode][0]
        assert two["processes"] == 2 and "processes" not in one
        assert one["history"]["optimizer_steps"] == two["history"]["optimizer_steps"] == 12
        for a, b in zip(one["history"]["epochs"], two["history"]["epochs"]):
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
            assert b["dev_loss"] == pytest.approx(a["dev_loss"], rel=1e-4)
        assert two["test"] == pytest.approx(one["test"], rel=1e-4)


def test_each_process_takes_its_share_of_every_batch():
    from recycling.batches import BatchShare, FeatureShare

    batches = [[0, 1, 2, 3], [4], [5, 6, 7, 8]]  # a short batch with fewer features than processes
    shares = [list(FeatureShare(batches, Processes(rank, 2), 9, 4)) for rank in (0, 1)]
    assert shares == [[[0, 2, 4], [5, 7]], [[1, 3], [6, 8]]]  # it joined the batch before it
    assert len(FeatureShare(batches, Processes(0, 2), 9, 4)) == 2
    first = [[4], [0, 1, 2, 3]]
    assert [list(FeatureShare(first, Processes(r, 2), 5, 4)) for r in (0, 1)] == [[[4, 1, 3]], [[0, 2]]]
    assert [list(BatchShare(batches, Processes(r, 2))) for r in (0, 1)] == [[[0, 1, 2, 3], [5, 6, 7, 8]], [[4]]]
    assert [len(BatchShare(batches, Processes(r, 2))) for r in (0, 1)] == [2, 1]
    with pytest.raises(UserError, match="1 training features cannot be shared by 2 processes"):
        FeatureShare([[0]], Processes(0, 2), 1, 4)
