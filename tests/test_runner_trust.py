"""The runner under faults: runs killed mid-training, two runs of one experiment, damaged result files."""

import json

import pytest

from recycling import runner
from recycling.errors import UserError
from recycling.files import locked
from recycling.results import LOCKS
from tests import faults
from tests.helpers import save_tiny_bert, write_toy_dataset
from tests.test_run_experiment import ROOT

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the experiment is then named by its file: exp
    model = save_tiny_bert(tmp_path / "model")
    write_toy_dataset(tmp_path / "data")
    config = tmp_path / "exp.yaml"
    config.write_text(
        f"base: {ROOT / 'HyperparameterSelection/text_classification/defaults.yaml'}\n"
        f"model: {model}\ncut_layer: 2\nmax_epochs: 3\npatience: 5\nbatch_size: 8\nwarmup_steps: 2\nmax_length: 24\n"
        "dataset: toy\nseeds: [0]\nmodes: [semi_frozen, full]\nlength_group_batches: 2\n"
        "learning_rate: {full: 1.0e-3, semi_frozen: 1.0e-3}\n")
    return tmp_path, config


def args(tmp_path, config, *extra):
    return runner.parse_args("test", [str(config), "--data-dir", str(tmp_path / "data"), "--results-dir",
                                      str(tmp_path / "results"), "--cache-root", str(tmp_path / "caches"),
                                      "--checkpoint-dir", str(tmp_path / "ckpt"), *extra])


def result(tmp_path):
    return json.loads((tmp_path / "results" / "text_classification" / "toy" / "exp.json").read_text())


def computed(run):
    """What a run computed, without its timings."""
    history = [{k: v for k, v in e.items() if k != "train_seconds"} for e in run["history"]["epochs"]]
    return history, run["dev"], run["test"], run["history"]["best_epoch"]


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, not even `except Exception` handlers."""


def test_a_run_killed_mid_training_resumes_with_the_same_metrics(setup, monkeypatch):
    tmp_path, config = setup
    runner.run_experiment("text_classification", args(tmp_path, config))
    reference = result(tmp_path)["runs"]
    (tmp_path / "results" / "text_classification" / "toy" / "exp.json").unlink()

    import recycling.trainer as trainer
    real, calls = trainer.evaluate, []

    def dies_in_epoch_three_of_full(*a, **k):  # semi_frozen trains 3 epochs; full dies in its third
        calls.append(1)
        if len(calls) == 6:
            raise Killed
        return real(*a, **k)
    monkeypatch.setattr(trainer, "evaluate", dies_in_epoch_three_of_full)
    with pytest.raises(Killed):
        runner.run_experiment("text_classification", args(tmp_path, config))
    monkeypatch.setattr(trainer, "evaluate", real)
    checkpoint = tmp_path / "ckpt" / "text_classification" / "toy" / "exp" / "full-seed0.pt"
    assert checkpoint.is_file() and not (checkpoint.parent / "semi_frozen-seed0.pt").exists()
    assert list(result(tmp_path)["runs"]["full"]) == []  # semi_frozen finished and was kept

    resumed_log = []
    monkeypatch.setattr(trainer.logger, "info", lambda msg, *a: resumed_log.append(msg % a))
    runner.run_experiment("text_classification", args(tmp_path, config, "--resume"))
    assert any("resuming from" in line and "after epoch 2" in line for line in resumed_log)
    after = result(tmp_path)["runs"]
    for mode in ("semi_frozen", "full"):
        assert computed(after[mode][0]) == computed(reference[mode][0])
    assert not checkpoint.exists()
    faults.record("training", "training killed in its third epoch, then rerun with `--resume`",
                  "continued after epoch 2; losses, dev and test scores identical to an uninterrupted run")


def test_a_second_process_on_the_same_experiment_stops_with_a_clear_message(setup):
    tmp_path, config = setup
    lock = tmp_path / "results" / LOCKS / "text_classification" / "toy" / "exp.lock"
    with locked(lock, "held by the test"):
        with pytest.raises(UserError, match="experiment exp .* is in use by another process") as err:
            runner.run_experiment("text_classification", args(tmp_path, config, "--set", "modes=[semi_frozen]",
                                                              "--set", "max_epochs=1"))
    assert not (tmp_path / "results" / "text_classification" / "toy" / "exp.json").exists()
    faults.record("results", "two processes run the same experiment at once", str(err.value), tmp_path)


@pytest.mark.parametrize("content,fault", [
    ('{"experiment": "exp", "runs": {', "truncated"),
    ('["a", "foreign", "file"]', "foreign JSON"),
    ("\udcff".encode("utf-8", "surrogateescape").decode("latin-1"), "not UTF-8"),
])
def test_damaged_or_foreign_result_files_never_stop_later_runs(setup, caplog, content, fault):
    tmp_path, config = setup
    folder = tmp_path / "results" / "text_classification" / "toy"
    folder.mkdir(parents=True)
    (folder / "exp.json").write_text(content, encoding="latin-1")  # the experiment's own file
    (folder / "other.json").write_text(content, encoding="latin-1")  # someone else's file in the folder
    runner.run_experiment("text_classification", args(tmp_path, config, "--set", "modes=[semi_frozen]",
                                                      "--set", "max_epochs=1"))
    assert result(tmp_path)["complete"]
    aside = list(folder.glob("exp.json.unreadable-*"))
    assert len(aside) == 1 and aside[0].read_text(encoding="latin-1") == content
    rows = (tmp_path / "results" / "summary.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("text_classification,toy")
    moved = next(r.getMessage() for r in caplog.records if "moved to" in r.getMessage())
    skipped = next(r.getMessage() for r in caplog.records if "left out of the summary" in r.getMessage())
    faults.record("results", f"the experiment's result file is {fault}", "warning: " + moved, tmp_path)
    faults.record("results", f"another file under results/ is {fault}", "warning: " + skipped, tmp_path)


def test_verify_cache_refuses_a_cache_damaged_after_it_was_built(setup):
    tmp_path, config = setup
    one_epoch = ("--set", "modes=[semi_frozen]", "--set", "max_epochs=1")
    runner.run_experiment("text_classification", args(tmp_path, config, *one_epoch))
    (hidden,) = (tmp_path / "caches").rglob("train/hidden.npy")
    data = bytearray(hidden.read_bytes())
    data[-3] ^= 0x40  # one bit of one activation: sizes and offsets stay valid
    hidden.write_bytes(bytes(data))
    runner.run_experiment("text_classification", args(tmp_path, config, *one_epoch, "--set", "seeds=[1]"))
    with pytest.raises(UserError, match=r"train/hidden.npy is corrupt") as err:
        runner.run_experiment("text_classification", args(tmp_path, config, *one_epoch, "--set", "seeds=[2]",
                                                          "--set", "verify_cache=true"))
    assert [r["seed"] for r in result(tmp_path)["runs"]["semi_frozen"]] == [0, 1]
    faults.record("training", "one bit flipped in a cached activation, training with `verify_cache: true`",
                  str(err.value), tmp_path)


def test_a_training_process_killed_with_sigkill_resumes_to_the_same_result(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import torch

    model = save_tiny_bert(tmp_path / "model")
    write_toy_dataset(tmp_path / "data", n_train=400)
    config = tmp_path / "exp.yaml"
    config.write_text(
        f"base: {ROOT / 'HyperparameterSelection/text_classification/defaults.yaml'}\n"
        f"model: {model}\ncut_layer: 2\nmax_epochs: 6\npatience: 6\nbatch_size: 8\nwarmup_steps: 5\n"
        "max_length: 24\ndataset: toy\nseeds: [0]\nmodes: [semi_frozen]\nlength_group_batches: 4\n"
        "learning_rate: {semi_frozen: 1.0e-3}\n")

    def command(name, *extra):
        return [sys.executable, str(ROOT / "TextClassificationScripts" / "run_experiment.py"), str(config),
                "--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path / name),
                "--cache-root", str(tmp_path / "caches"), "--checkpoint-dir", str(tmp_path / f"ckpt-{name}"), *extra]

    def outcome(name):
        (run,) = json.loads((tmp_path / name / "text_classification" / "toy" / "exp.json").read_text())["runs"][
            "semi_frozen"]
        return computed(run)

    assert subprocess.run(command("reference"), cwd=tmp_path, capture_output=True).returncode == 0
    checkpoint = tmp_path / "ckpt-killed" / "text_classification" / "toy" / "exp" / "semi_frozen-seed0.pt"
    proc = subprocess.Popen(command("killed"), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not checkpoint.exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # during the second epoch: the first one's checkpoint just landed
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = len(torch.load(checkpoint, weights_only=True)["history"]["epochs"])
    assert 1 <= finished < 6
    resumed = subprocess.run(command("killed", "--resume"), cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0 and f"after epoch {finished}" in resumed.stderr
    assert outcome("killed") == outcome("reference")
    faults.record("training", "the training process SIGKILLed right after its first checkpoint, then rerun with "
                  "`--resume`", "continued after its last finished epoch; losses, dev and test scores identical "
                  "to an uninterrupted run")


def test_results_of_other_data_are_moved_aside_not_reused(setup, caplog):
    tmp_path, config = setup
    one = ("--set", "modes=[semi_frozen]", "--set", "max_epochs=1")
    runner.run_experiment("text_classification", args(tmp_path, config, *one))
    train = tmp_path / "data" / "text_classification" / "toy" / "train.txt"
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    train.write_text("".join(json.dumps({**r, "text": r["text"] + " again"}) + "\n" for r in rows))
    runner.run_experiment("text_classification", args(tmp_path, config, *one))
    moved = next(r.getMessage() for r in caplog.records if "moved to" in r.getMessage())
    assert "data_sha256" in moved and "model_sha256" not in moved
    assert list((tmp_path / "results" / "text_classification" / "toy").glob("exp.json.replaced-*"))
    faults.record("results", "the dataset's texts changed in place, then the experiment rerun",
                  "warning: " + moved, tmp_path)


def test_training_that_diverges_is_an_error_not_a_result(setup):
    tmp_path, config = setup
    with pytest.raises(UserError, match="training diverged in epoch 1") as err:
        runner.run_experiment("text_classification", args(tmp_path, config, "--set", "modes=[semi_frozen]",
                                                          "--set", "learning_rate={semi_frozen: 1.0e+30}"))
    assert not (tmp_path / "results" / "text_classification" / "toy" / "exp.json").exists()
    faults.record("training", "a learning rate of 1e30 (losses become NaN)", str(err.value), tmp_path)


@pytest.mark.parametrize("option", ["--results-dir", "--checkpoint-dir", "--cache-root", "--save-models"])
def test_an_output_folder_that_is_a_file_is_refused_before_training(setup, option):
    tmp_path, config = setup
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    extra = ["--set", "modes=[semi_frozen]", "--set", "max_epochs=1"]
    argv = [str(config), "--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path / "results"),
            "--cache-root", str(tmp_path / "caches"), "--checkpoint-dir", str(tmp_path / "ckpt"), *extra]
    argv += [option, str(blocker)]
    with pytest.raises(UserError) as err:
        runner.run_experiment("text_classification", runner.parse_args("test", argv))
    assert "a-file" in str(err.value)
    faults.record("results", f"`{option}` names a file, not a folder", str(err.value), tmp_path)


def test_a_link_planted_at_a_lock_file_is_refused(setup):
    tmp_path, config = setup
    lock = tmp_path / "results" / LOCKS / "text_classification" / "toy" / "exp.lock"
    lock.parent.mkdir(parents=True)
    (tmp_path / "target").write_text("untouched")
    lock.symlink_to(tmp_path / "target")
    with pytest.raises(UserError, match="symbolic link") as err:
        runner.run_experiment("text_classification", args(tmp_path, config, "--set", "modes=[semi_frozen]"))
    assert (tmp_path / "target").read_text() == "untouched"
    faults.record("results", "a symbolic link planted at the experiment's lock file", str(err.value), tmp_path)


def test_a_result_file_with_a_malformed_run_is_moved_aside(setup, caplog):
    tmp_path, config = setup
    one = ("--set", "modes=[semi_frozen]", "--set", "max_epochs=1")
    runner.run_experiment("text_classification", args(tmp_path, config, *one))
    path = tmp_path / "results" / "text_classification" / "toy" / "exp.json"
    data = json.loads(path.read_text())
    data["runs"]["semi_frozen"][0]["seed"] = "0"
    path.write_text(json.dumps(data))
    runner.run_experiment("text_classification", args(tmp_path, config, *one))
    assert [r["seed"] for r in result(tmp_path)["runs"]["semi_frozen"]] == [0]
    moved = next(r.getMessage() for r in caplog.records if "moved to" in r.getMessage())
    faults.record("results", "a result file whose run has a seed that is a string", "warning: " + moved, tmp_path)


@pytest.mark.parametrize("root", ["results", "caches", "ckpt", "models"])
def test_a_folder_link_planted_inside_an_output_root_is_never_written_through(setup, root):
    tmp_path, config = setup
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / root / "text_classification").mkdir(parents=True)
    (tmp_path / root / "text_classification" / "toy").symlink_to(elsewhere)
    with pytest.raises(UserError, match="through a symbolic link") as err:
        runner.run_experiment("text_classification", args(tmp_path, config, "--set", "modes=[semi_frozen]",
                                                          "--set", "max_epochs=1", "--save-models",
                                                          str(tmp_path / "models")))
    assert not any(elsewhere.iterdir())
    faults.record("results", f"a folder link planted inside `{root}/` (at `text_classification/toy`)",
                  str(err.value), tmp_path)
