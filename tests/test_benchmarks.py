"""The speed benchmark: its arithmetic on known cases, its settings, and the whole command on a
tiny model (the GPU suite's code path, at tiny shapes on the CPU). No timing is asserted."""

import csv
import json

import pytest
import torch
from transformers import AutoConfig, AutoModel

from benchmarks import report, speed
from benchmarks.__main__ import parse_args, run
from benchmarks.suites import CONFIGS, SUITES, EpochSpec, ModelSpec, Suite
from recycling import encoders
from recycling.batches import FeatureDataset, make_loader
from recycling.tasks import Features
from tests.helpers import save_tiny_bert, write_toy_dataset
from tests.tiny_models import tiny_model


@pytest.mark.parametrize("layers, cut, expected", [
    (12, 6, {"semi_frozen vs full": 2.0, "adapters vs adapters_full": 1.5,
             "adapters vs adapters_everywhere": 2.0, "inference: cache vs text": 2.0}),
    (24, 6, {"semi_frozen vs full": 24 / 18, "adapters vs adapters_full": 42 / 36,
             "adapters vs adapters_everywhere": 24 / 18, "inference: cache vs text": 24 / 18}),
])
def test_ideal_ratios_count_layer_passes(layers, cut, expected):
    assert {pair: speed.ideal_ratio(pair, layers, cut) for pair, _, _ in speed.PAIRS} == pytest.approx(expected)


def test_amortized_speedup_and_break_even():
    # build 10 s, 10 s per epoch from text, 5 s from the cache
    a = speed.amortized(10.0, 10.0, 5.0, epochs_per_experiment=2, n_max=4)
    assert a["speedup_by_epochs"] == pytest.approx({1: 10 / 15, 2: 1.0, 3: 30 / 25, 4: 40 / 30})
    assert a["break_even_epoch"] == 3  # the first epoch count where recycling is strictly faster
    assert a["speedup_by_experiments"][3] == pytest.approx(60 / 40)
    assert speed.amortized(10.0, 5.0, 5.0, 1)["break_even_epoch"] is None


def test_padding_fraction_counts_padded_positions():
    data = FeatureDataset(Features([[1] * 4, [1] * 2, [1] * 4, [1] * 1], {"labels": [0, 0, 0, 0]}), 0)
    loader = make_loader(data, 2, shuffle=False)  # longest first: (4, 4), (2, 1)
    assert speed.padding_fraction(data, loader) == pytest.approx(1 - 11 / 12)


def test_adapters_everywhere_trains_adapters_in_every_layer_only():
    base = tiny_model("bert")
    model = speed.make_model("adapters_everywhere", base, 2, speed.sequence_head(base), 8, "cpu")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    layers_with_adapters = {int(n.split("encoder.layer.")[1].split(".")[0]) for n in trainable if "adapters" in n}
    assert layers_with_adapters == set(range(encoders.num_layers(base)))
    assert all("adapters" in n or n.startswith("head.") for n in trainable)
    model.train()
    assert not model.encoder.embeddings.training  # frozen parts run as the cache was built


def test_peak_rss_sees_an_allocation():
    with speed.PeakRSS() as rss:
        before = speed.PeakRSS.now()
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        block += 1
    assert rss.peak - before >= 48 * 2**20


@pytest.mark.parametrize("name, layers, hidden", [
    ("bert-base-uncased", 12, 768), ("roberta-large", 24, 1024), ("deberta-v2-xlarge", 24, 1536),
    ("t5-large-encoder", 24, 1024), ("all-MiniLM-L6-v2", 6, 384), ("all-mpnet-base-v2", 12, 768)])
def test_paper_shapes_are_written_down_and_every_setting_steps(name, layers, hidden, tmp_path, monkeypatch):
    config = AutoConfig.from_pretrained(CONFIGS / f"{name}.json")
    assert config.num_hidden_layers == layers and config.hidden_size == hidden
    assert {s.name for s in SUITES["gpu"].models} >= {f"config:{name}"}
    # The same architecture at a tiny size goes through the GPU suite's own loading, every setting's
    # step and its FLOP count (DeBERTa's FLOP count and T5's loading once failed only on the GPU).
    for key, value in dict(num_hidden_layers=2, num_layers=2, hidden_size=32, d_model=32, intermediate_size=37,
                           d_ff=37, num_attention_heads=4, num_heads=4, d_kv=8, vocab_size=99).items():
        if hasattr(config, key):
            setattr(config, key, value)
    (tmp_path / f"{name}.json").write_text(config.to_json_string())
    monkeypatch.setattr(speed, "CONFIGS", tmp_path)
    base, tokenizer = speed.load_model(ModelSpec(f"config:{name}", grid=()))
    assert tokenizer is None and encoders.num_layers(base) == 2
    suite = Suite(models=(), repeats=1, warmup=1, adapter_size=8)
    text, cached = speed.synthetic_batches(base, 1, 8, 2, suite, "cpu")
    for setting in speed.TRAIN_SETTINGS + ("infer_text", "infer_cache"):
        side = speed.Side(setting, base, 1, suite, cached if setting in speed.CACHED_SETTINGS else text, "cpu")
        assert side.flops() > 0, setting


@pytest.mark.parametrize("weights, precision, cache_dtype", [
    ("pretrained", "fp32", "float16"),  # the CPU suite's path: a saved model with its tokenizer
    ("random", "bf16", "bfloat16"),  # the GPU suite's path: a config's shape, --tokenizer, bf16
])
def test_the_whole_command_on_a_tiny_model(tmp_path, weights, precision, cache_dtype):
    """Step and epoch level, result file with provenance, summary, table and plot."""
    folder = save_tiny_bert(tmp_path / "tiny", layers=4)
    write_toy_dataset(tmp_path / "data", n_train=24)
    name = str(folder) if weights == "pretrained" else "config:tiny-bert"
    suite = Suite(models=(ModelSpec(name, grid=((16, 4), (32, 4)), epoch=EpochSpec(
        dataset="toy", max_examples={"train": 24}, max_length=64, batch_size=8, eval_batch_size=8,
        epochs_per_experiment=2)),), repeats=2, warmup=1, adapter_size=8, precision=precision,
        cache_dtype=cache_dtype, codecs=(("int8", None), ("pca", 8)))
    args = parse_args(["--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path / "results"),
                       "--device", "cpu", "--tokenizer", str(folder)])
    (path,) = run(args, suite)
    result = json.loads(path.read_text())

    env = result["environment"]
    assert env["git_sha"] and env["device"].startswith("cpu") and env["packages"]["torch"]
    assert result["model"]["layers"] == 4 and result["model"]["cut_layer"] == 2
    assert result["model"]["weights"] == weights and result["suite"]["precision"] == precision
    steps = result["step_level"]
    assert {(p["pair"], p["seq_len"]) for p in steps} == {(pair, s) for pair, _, _ in speed.PAIRS for s in (16, 32)}
    for p in steps:
        assert p["baseline_s"] > 0 and p["recycled_s"] > 0 and len(p["step_times"]["baseline"]) == 2
        assert p["measured_ratio"] == pytest.approx(p["baseline_s"] / p["recycled_s"])
        assert p["efficiency"] == pytest.approx(p["measured_ratio"] / p["ideal_ratio"])
        # torch's count: the recycled side does less work, in the ideal proportion up to head and embeddings
        assert p["flops_recycled"] < p["flops_baseline"]

    epoch = result["epoch_level"]
    assert epoch["examples"] == {"train": 24, "dev": 8, "test": 8}
    assert epoch["cache"]["bytes_per_token"] > 32 * 2  # 16-bit hidden states of width 32, plus offsets
    assert epoch["config"]["cache_dtype"] == cache_dtype
    assert set(epoch["settings"]) == {*speed.TRAIN_SETTINGS, "infer_text", "infer_cache"}
    assert set(epoch["profile"]["full"]) == {"data", "to_device", "forward", "backward", "optimizer"}
    assert epoch["amortized"]["epochs_per_experiment"] == 2 and len(epoch["amortized"]["speedup_by_epochs"]) == 10
    assert 0 <= epoch["padding_fraction"] < 1

    bench = tmp_path / "results" / "benchmarks"
    with open(bench / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    required = {"model", "weights", "device", "setting", "seq_len", "batch_size", "measured_ratio", "ideal_ratio",
                "efficiency", "baseline_s", "recycled_s", "peak_mem_baseline", "peak_mem_recycled"}
    assert required <= set(rows[0])
    assert len(rows) == len(steps) + len(speed.PAIRS) + 2
    assert {r["level"] for r in rows} == {"step", "epoch", "codec"}
    summary = (bench / "summary.md").read_text()
    assert summary.count(f"| {rows[0]['model']} |") == len(rows) + 3  # every row, and one per shape

    # read + decode per epoch: the plain cache and each codec, timed in alternation
    codecs = {r["codec"]: r for r in result["codec_level"]["codecs"]}
    assert set(codecs) == {cache_dtype, "int8", "pca8"}
    assert codecs["int8"]["stored_as"] == "int8" and codecs["pca8"]["stored_as"] == f"pca8-{cache_dtype}"
    assert codecs["pca8"]["bytes_per_token"] < codecs["int8"]["bytes_per_token"] < codecs[cache_dtype]["bytes_per_token"]
    for r in codecs.values():
        assert len(r["passes"]) == 2 and r["speed_vs_plain"] == pytest.approx(
            codecs[cache_dtype]["read_decode_s"] / r["read_decode_s"])
    assert "read + decode: pca8 vs " in summary
    assert (bench / "ratio_vs_seq_len.png").stat().st_size > 0

    if weights == "pretrained":  # the epoch level again, the step level kept with its provenance
        (again,) = run(parse_args(["--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path / "results"),
                                   "--device", "cpu", "--epochs-only"]), suite)
        second = json.loads(again.read_text())
        assert second["step_level"] == steps and second["step_level_environment"] == env
        assert second["epoch_level"]["settings"] != epoch["settings"]  # measured anew
        (again,) = run(parse_args(["--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path / "results"),
                                   "--device", "cpu", "--codecs-only"]), suite)
        third = json.loads(again.read_text())
        assert third["epoch_level"] == second["epoch_level"] and third["codec_level_environment"]["git_sha"]
        assert third["codec_level"]["codecs"] != second["codec_level"]["codecs"]  # measured anew


def test_ratio_table_puts_each_shape_on_one_line():
    row = dict(model="m", device="d", level="step", seq_len=128, batch_size=8, ideal_ratio=2.0)
    rows = [dict(row, setting="a", measured_ratio=2.2, efficiency=1.1),
            dict(row, setting="b", measured_ratio=1.2, efficiency=0.8),
            dict(row, seq_len=256, setting="a", measured_ratio=1.9, efficiency=0.95)]
    assert report.ratio_table(rows).splitlines()[2:] == [
        "| m | d | step | 128 | 8 | 2.20x (1.10) | 1.20x (0.80) |",
        "| m | d | step | 256 | 8 | 1.90x (0.95) |  |"]


def test_report_skips_a_foreign_file(tmp_path):
    (tmp_path / "somewhere").mkdir()
    (tmp_path / "somewhere" / "broken.json").write_text("{not json")
    assert report.rebuild(tmp_path) == []


def test_unknown_model_filter_is_one_error_line(capsys):
    from benchmarks.__main__ import main

    assert main(["--suite", "smoke", "--models", "no-such-model"]) == 2
    assert capsys.readouterr().err.strip() == "error: no model of suite 'smoke' matches ['no-such-model']"
