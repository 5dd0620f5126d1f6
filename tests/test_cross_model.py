"""Cross-model recycling: token alignment across tokenizers, the bridge, and the mode end to end."""

import csv
import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertTokenizerFast

from recycling import cross_model, encoders, predict, runner
from recycling.config import load_config
from recycling.cross_model import AlignedSource, TokenText, align, align_features
from recycling.errors import UserError
from recycling.models import UpperSettings, build_model
from recycling.tasks import Features
from tests import faults
from tests.helpers import save_tiny_bert, write_toy_dataset
from tests.test_run_experiment import ROOT

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
WORDS = ("cats", "purr", "dogs", "bark", "sample")


def spans(starts, ends):
    return list(zip(starts.tolist(), ends.tolist()))


def test_pieces_of_one_source_word_all_take_it_and_a_word_spanning_pieces_takes_their_mean():
    consumer = ["", "c", "at", "s", "pur", "r", ""]
    source = ["", "cats", "pu", "rr", ""]
    special_c = [True, False, False, False, False, False, True]
    special_s = [True, False, False, False, True]
    starts, ends = align(consumer, source, special_c, special_s)
    assert spans(starts, ends) == [(0, 1), (1, 2), (1, 2), (1, 2), (2, 4), (3, 4), (4, 5)]


def test_text_the_source_cut_off_or_wrote_otherwise_gets_no_source_state():
    # the source was truncated after "ab" (its last special token closes it), and has no "x"
    starts, ends = align(["", "ab", "cd", ""], ["", "ab", ""], [True, False, False, True], [True, False, True])
    assert spans(starts, ends) == [(0, 1), (1, 2), (0, 0), (2, 3)]
    starts, ends = align(["q", "x", "r"], ["q", "?", "r"], [False] * 3, [False] * 3)
    assert spans(starts, ends) == [(0, 1), (0, 0), (2, 3)]


def test_token_texts_drop_word_piece_markers_case_and_accents(tmp_path):
    folder = save_tiny_bert(tmp_path / "m", words=("Café",))
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=False)  # keeps the accent
    text = TokenText(tokenizer)
    ids = tokenizer("ab Café")["input_ids"]
    assert [text(i) for i in ids] == ["", "a", "b", "cafe", ""]


def test_aligned_rows_are_the_mean_of_the_source_rows_each_token_covers():
    class Split:  # a cached split: feature 0 has three source rows
        codec = None
        hidden = np.arange(6, dtype=np.float16).reshape(3, 2)

        def rows(self, i):
            return self.hidden

        def as_torch(self, array):
            return torch.from_numpy(array)

    alignment = [(np.array([0, 1, 0]), np.array([1, 3, 0]))]
    rows, mask = AlignedSource(Split(), alignment, size=2).rows(0)
    assert rows.tolist() == [[0, 1], [3, 4], [0, 0]] and mask.tolist() == [True, True, False]


def test_two_tokenizations_of_the_same_texts_align_feature_by_feature(tmp_path):
    chars = AutoTokenizer.from_pretrained(save_tiny_bert(tmp_path / "chars"))
    words = AutoTokenizer.from_pretrained(save_tiny_bert(tmp_path / "words", words=WORDS))
    texts = ["Cats purr", "dogs bark loudly"]
    consumer = Features([chars(t)["input_ids"] for t in texts], {})
    source = Features([words(t)["input_ids"] for t in texts], {})
    (s0, e0), (s1, e1) = align_features(consumer, source, chars, words)
    # [CLS] c a t s p u r r [SEP] against [CLS] cats purr [SEP]
    assert spans(s0, e0) == [(0, 1)] + [(1, 2)] * 4 + [(2, 3)] * 4 + [(3, 4)]
    # "loudly" is characters on both sides
    assert spans(s1, e1)[-7:] == [(3 + i, 4 + i) for i in range(7)]
    with pytest.raises(ValueError, match="1 consumer features, 2 source features"):
        align_features(Features(consumer.input_ids[:1], {}), source, chars, words)


def test_the_consumer_starts_as_the_full_baseline_and_the_bridge_learns(tmp_path):
    base, _ = encoders.load_encoder(str(save_tiny_bert(tmp_path / "m")))
    head = lambda: torch.nn.Linear(32, 3)  # noqa: E731

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = head()

        def forward(self, hidden, mask):
            return self.linear(hidden[:, 0])

    full = build_model("full", base, 2, Head, UpperSettings(), seed=3).eval()
    cross = build_model("cross_model", base, 2, Head, UpperSettings(source_size=48), seed=3).eval()
    ids = torch.randint(5, 40, (2, 7))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "source": torch.randn(2, 7, 48),
             "source_mask": torch.ones(2, 7, dtype=torch.bool)}
    assert torch.equal(full(batch), cross(batch))
    cross(batch).sum().backward()
    assert cross.bridge.net[2].weight.grad.abs().sum() > 0  # the zero output layer gets a gradient
    # a masked token's embedding is never changed by the bridge
    with torch.no_grad():
        cross.bridge.net[2].bias.fill_(1.0)
    masked = dict(batch, source_mask=torch.zeros(2, 7, dtype=torch.bool))
    assert torch.equal(full(batch), cross(masked)) and not torch.equal(full(batch), cross(batch))
    with pytest.raises(ValueError, match="source_size"):
        build_model("cross_model", base, 2, Head, UpperSettings(), seed=3)


@pytest.mark.parametrize("text, message", [
    ("modes: [full, cross_model]\n", "needs source_model"),
    ("task: ner\nmetric: entity_f1\nmodes: [cross_model]\nsource_model: x\n", "splits long texts into windows"),
])
def test_cross_model_settings_are_checked(tmp_path, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(f"dataset: toy\nmodel: m\ncut_layer: 2\n{text}")
    with pytest.raises(UserError, match=message) as err:
        load_config(config)
    faults.record("config", f"cross_model: `{text.strip().replace(chr(10), '; ')}`", str(err.value), tmp_path)


def test_cross_model_trains_from_the_source_cache_saves_and_predicts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    consumer = save_tiny_bert(tmp_path / "consumer")
    source = save_tiny_bert(tmp_path / "source", seed=1, layers=2, words=WORDS, hidden_size=48)
    write_toy_dataset(tmp_path / "data")
    config = tmp_path / "exp.yaml"
    config.write_text(
        f"base: {ROOT / 'HyperparameterSelection' / 'text_classification' / 'defaults.yaml'}\n"
        f"model: {consumer}\nsource_model: {source}\ncut_layer: 2\nmax_epochs: 2\nbatch_size: 8\nwarmup_steps: 0\n"
        "max_length: 24\ndataset: toy\nmodes: [full, cross_model]\n"
        "learning_rate: {full: 1.0e-3, cross_model: 1.0e-3}\n")
    args = runner.parse_args("test", [str(config), "--data-dir", str(tmp_path / "data"), "--results-dir",
                                      str(tmp_path / "results"), "--cache-root", str(tmp_path / "caches"),
                                      "--checkpoint-dir", str(tmp_path / "ckpt"), "--save-models",
                                      str(tmp_path / "models")])
    result = json.loads(runner.run_experiment("text_classification", args).read_text())
    full, cross = result["runs"]["full"][0], result["runs"]["cross_model"][0]
    # the whole consumer, its head, and the bridge 48 -> 32 -> 32
    assert cross["trainable_parameters"] == full["trainable_parameters"] + (48 * 32 + 32) + (32 * 32 + 32)
    # the first step is full's (the bridge adds zero), then the bridge changes the training
    assert cross["history"]["epochs"][0]["train_loss"] != full["history"]["epochs"][0]["train_loss"]
    fp = result["source_cache"]["fingerprint"]
    assert fp["model"] == str(source) and fp["cut_layer"] == 2 and result["cache"] is None
    rows = {r["mode"]: r for r in csv.DictReader(open(tmp_path / "results" / "summary.csv"))}
    assert rows["cross_model"]["source_model"] == str(source) and rows["cross_model"]["train_speedup"]
    assert rows["cross_model"]["cache_bytes"] and not rows["full"]["source_model"]
    assert rows["cross_model"]["cut_layer"] == ""  # the consumer is trained whole

    test_file = tmp_path / "data" / "text_classification" / "toy" / "test.txt"
    model_dir = tmp_path / "models" / "text_classification" / "toy" / "exp" / "cross_model-seed0"
    scores = predict.predict(predict.parse_args([str(model_dir), str(test_file), "--output",
                                                 str(tmp_path / "pred.jsonl"), "--cache-root",
                                                 str(tmp_path / "caches")]))
    assert scores == pytest.approx({k: v for k, v in cross["test"].items() if k != "loss"}, abs=1e-9)

    # a source model that changed since training is refused
    save_tiny_bert(source, seed=2, layers=2, words=WORDS, hidden_size=48)
    with pytest.raises(UserError, match="states of another") as err:
        predict.predict(predict.parse_args([str(model_dir), str(test_file), "--output", str(tmp_path / "p2"),
                                            "--cache-root", str(tmp_path / "caches")]))
    faults.record("saved models", "predict with a cross_model model whose source model changed since training",
                  str(err.value), tmp_path)


def test_the_source_cache_is_the_source_models_final_layer(tmp_path):
    source = save_tiny_bert(tmp_path / "source", layers=2, words=WORDS, hidden_size=48)
    model, tokenizer = encoders.load_encoder(str(source))
    whole = encoders.lower_part(model, 2)
    ids = torch.tensor([tokenizer("cats purr")["input_ids"]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.equal(encoders.run_lower(whole, ids, mask), model(input_ids=ids, attention_mask=mask)
                           .last_hidden_state)
    with pytest.raises(UserError, match="cut_layer"):
        encoders.lower_part(model, 3)
    assert cross_model.Bridge(48, 32)(torch.ones(1, 2, 48), torch.ones(1, 2)).abs().sum() == 0
