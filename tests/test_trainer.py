import math
import threading

import pytest
import torch
from torch import nn

from cache_builder.store import CachedSplit, SplitWriter
from recycling.batches import FeatureDataset, make_loader, prefetch
from recycling.heads import IGNORE, SequenceClassificationHead, TokenClassificationHead
from recycling.tasks import Features
from recycling.trainer import TrainSettings, autocast, evaluate, train


class Recorder(nn.Module):
    """A linear classifier over a bag of token ids that records how each forward was run."""

    def __init__(self):
        super().__init__()
        self.emb = nn.EmbeddingBag(20, 2, mode="sum")
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))  # state outside the parameters
        self.calls = []

    def forward(self, batch):
        self.calls.append((self.training, torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        if self.training:
            self.train_steps += 1
        return self.emb(batch["input_ids"], per_sample_weights=batch["attention_mask"].float())

    def loss(self, logits, batch):
        return SequenceClassificationHead.loss(None, logits, batch)

    def unbatch(self, logits, batch):
        return SequenceClassificationHead.unbatch(None, logits, batch)


def _data(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids, labels = [], []
    for i in range(n):
        label = i % 2
        length = int(torch.randint(2, 7, (1,), generator=g))
        ids.append([1 + label] * length + [3])  # token 1 -> class 0, token 2 -> class 1
        labels.append(label)
    return FeatureDataset(Features(ids, {"labels": labels}), pad_id=0)


def test_dev_and_test_never_compute_gradients():
    model = Recorder()
    train_loader = make_loader(_data(), 4, shuffle=True)
    dev_loader = make_loader(_data(8, 1), 4, shuffle=False)
    train(model, train_loader, dev_loader, TrainSettings(0.1, max_epochs=2, patience=5, warmup_steps=0), "cpu")
    train_calls = [c for c in model.calls if c[0]]
    eval_calls = [c for c in model.calls if not c[0]]
    assert len(train_calls) == 2 * 4 and len(eval_calls) == 2 * 2
    assert all(grad and not inference for _, grad, inference in train_calls)
    assert all(inference and not grad for _, grad, inference in eval_calls)
    model.zero_grad(set_to_none=True)
    evaluate(model, dev_loader, "cpu")
    assert all(p.grad is None for p in model.parameters())


def test_outputs_come_back_in_feature_order_whatever_the_batch_order():
    model = Recorder()
    data = _data(8, 1)
    result = evaluate(model, make_loader(data, 3, shuffle=False), "cpu")  # longest first
    one_by_one = [evaluate(model, make_loader(FeatureDataset(Features([ids], {"labels": [y]}), 0), 1, False),
                           "cpu").outputs[0] for ids, y in zip(data.features.input_ids, data.features.targets["labels"])]
    assert all(torch.allclose(a, b) for a, b in zip(result.outputs, one_by_one))


def test_training_learns_and_restores_the_best_epoch():
    model = Recorder()
    history = train(model, make_loader(_data(), 4, True), make_loader(_data(8, 1), 4, False),
                    TrainSettings(0.5, max_epochs=4, patience=4, warmup_steps=0), "cpu")
    losses = [e["dev_loss"] for e in history.epochs]
    assert history.best_epoch == 1 + losses.index(min(losses))
    result = evaluate(model, make_loader(_data(8, 1), 4, False), "cpu")
    assert result.loss == min(losses)
    assert [int(o.argmax()) for o in result.outputs] == _data(8, 1).features.targets["labels"]


def test_restoring_the_best_epoch_restores_buffers_too():
    model = Recorder()
    # A zero learning rate: the first epoch stays best, while the buffer keeps counting.
    history = train(model, make_loader(_data(), 4, True), make_loader(_data(8, 1), 4, False),
                    TrainSettings(0.0, max_epochs=3, patience=5, warmup_steps=0), "cpu")
    assert history.best_epoch == 1 and len(history.epochs) == 3
    assert int(model.train_steps) == 4  # the state after epoch 1, not after epoch 3 (12)


def test_selection_on_the_dev_metric_keeps_the_epoch_with_the_best_score():
    model = Recorder()
    scores = iter([0.2, 0.9, 0.5, 0.1])
    history = train(model, make_loader(_data(), 4, True), make_loader(_data(8, 1), 4, False),
                    TrainSettings(0.5, max_epochs=4, patience=2, warmup_steps=0), "cpu",
                    dev_score=lambda evaluation: next(scores))
    assert [e["dev_score"] for e in history.epochs] == [0.2, 0.9, 0.5, 0.1]
    assert history.best_epoch == 2 and history.stopped_early and int(model.train_steps) == 2 * 4


def test_early_stopping_after_patience_epochs_without_improvement():
    model = Recorder()
    # With a zero learning rate the dev loss never improves on the first epoch.
    history = train(model, make_loader(_data(), 4, True), make_loader(_data(8, 1), 4, False),
                    TrainSettings(0.0, max_epochs=10, patience=2, warmup_steps=0), "cpu")
    assert history.stopped_early and len(history.epochs) == 3 and history.best_epoch == 1


def test_warmup_and_decay_count_optimizer_steps_not_micro_batches():
    model = Recorder()
    loader = make_loader(_data(16), 2, True)  # 8 micro-batches per epoch
    settings = TrainSettings(1.0, max_epochs=2, patience=5, warmup_steps=2, grad_accum_steps=4)
    history = train(model, loader, make_loader(_data(4, 1), 4, False), settings, "cpu")
    assert history.optimizer_steps == 2 * 2


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5])
def test_warmup_ratio_is_a_fraction_of_all_optimizer_steps(ratio):
    model = Recorder()
    loader = make_loader(_data(16), 2, True)  # 8 steps per epoch, 3 epochs
    settings = TrainSettings(1.0, max_epochs=3, patience=5, warmup_steps=100, warmup_ratio=ratio)
    history = train(model, loader, make_loader(_data(4, 1), 4, False), settings, "cpu")
    assert history.warmup_steps == math.ceil(ratio * 24)
    assert TrainSettings(1.0, 3, 5, warmup_steps=7).warmup(24) == 7


def test_a_warmup_longer_than_half_the_run_is_warned_about(caplog):
    loader = make_loader(_data(16), 2, True)  # 8 steps per epoch, 2 epochs
    with caplog.at_level("WARNING"):
        train(Recorder(), loader, make_loader(_data(4, 1), 4, False), TrainSettings(1.0, 2, 5, warmup_steps=9), "cpu")
    assert "warm-up takes 9 of the run's 16 optimizer steps" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        train(Recorder(), loader, make_loader(_data(4, 1), 4, False), TrainSettings(1.0, 2, 5, warmup_steps=8), "cpu")
    assert "warm-up" not in caplog.text


def test_each_epoch_reshuffles_with_a_reproducible_order():
    data = FeatureDataset(Features([[i + 1] for i in range(12)], {"labels": [0] * 12}), 0)

    def orders(seed):
        loader = make_loader(data, 3, shuffle=True, seed=seed, group_by_length=False)
        return [[b["input_ids"][:, 0].tolist() for b in loader] for _ in range(2)]

    first, second = orders(5)
    assert first != second  # a new order every epoch
    assert orders(5) == [first, second]  # the same orders for the same seed


def _lengths_dataset(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 120, (n,), generator=g).tolist()
    return FeatureDataset(Features([[7] * k for k in lengths], {"labels": [0] * n}), 0)


def _padding(data, loader) -> float:
    widths = [(max(data.lengths[i] for i in b), len(b)) for b in loader.batch_sampler]
    return 1 - sum(data.lengths) / sum(w * n for w, n in widths)


def test_length_groups_cover_every_feature_once_with_little_padding_and_a_new_order_each_epoch():
    data = _lengths_dataset()
    loader = make_loader(data, 8, shuffle=True, seed=3, group_batches=50)
    epochs = [[b["index"].tolist() for b in loader] for _ in range(2)]
    for batches in epochs:
        assert sorted(i for b in batches for i in b) == list(range(200))
        assert len(batches) == len(loader) == 25
    assert epochs[0] != epochs[1]  # batches and their order change with every epoch
    assert [b["index"].tolist() for b in make_loader(data, 8, True, seed=3, group_batches=50)] == epochs[0]
    # one sorted group of 200: padding only within neighbours in length order; far below a random batching
    grouped = _padding(data, make_loader(data, 8, True, seed=3, group_batches=50))
    legacy = _padding(data, make_loader(data, 8, True, seed=3, group_batches=None))
    random = _padding(data, make_loader(data, 8, True, seed=3, group_by_length=False))
    assert grouped < 0.05 < legacy < random


def test_length_groups_count_partial_batches_per_group():
    data = _lengths_dataset(n=45)
    loader = make_loader(data, 4, shuffle=True, seed=0, group_batches=3)  # groups of 12, 12, 12, 9
    batches = [b["index"].tolist() for b in loader]
    assert len(batches) == len(loader) == 3 * 3 + 3
    assert sorted(i for b in batches for i in b) == list(range(45))


def test_batches_are_padded_to_their_own_longest_feature():
    data = FeatureDataset(Features([[5] * 3, [5] * 9, [5] * 4, [5] * 2], {"labels": [0, 1, 0, 1]}), 0)
    batches = list(make_loader(data, 2, shuffle=False))
    assert [b["input_ids"].shape[1] for b in batches] == [9, 3]  # longest first: (9, 4) then (3, 2)
    assert [b["index"].tolist() for b in batches] == [[1, 2], [0, 3]]


def _cached_split(tmp_path, rows: list[torch.Tensor], dtype: str) -> CachedSplit:
    writer = SplitWriter(tmp_path / dtype, [len(r) for r in rows], rows[0].shape[1], dtype)
    for i, r in enumerate(rows):
        writer.write(i, r)
    writer.close()
    return CachedSplit(tmp_path / dtype, dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cached_and_per_token_targets_are_padded(tmp_path, dtype):
    rows = [torch.randn(2, 4), torch.randn(5, 4)]
    features = Features([[1, 2], [1, 2, 3, 4, 5]], {"labels": [[IGNORE, 3], [IGNORE, 1, IGNORE, 2, IGNORE]]})
    cached = _cached_split(tmp_path, rows, dtype)
    batch = next(iter(make_loader(FeatureDataset(features, 0, cached=cached), 2, shuffle=False)))
    # the storage dtype all the way to the device: the model casts there
    assert batch["hidden"].shape == (2, 5, 4) and batch["hidden"].dtype == cached.torch_dtype
    assert torch.equal(batch["hidden"][0], rows[1].to(cached.torch_dtype))
    assert torch.equal(batch["hidden"][1, :2], rows[0].to(cached.torch_dtype))
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["hidden"][1, 2:].float().abs().sum() == 0
    assert batch["labels"].tolist() == [[IGNORE, 1, IGNORE, 2, IGNORE], [IGNORE, 3, IGNORE, IGNORE, IGNORE]]
    assert "input_ids" not in batch


def test_prefetch_yields_every_batch_in_order_and_passes_errors_on():
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))
    assert list(prefetch(iter(range(5)), depth=0)) == list(range(5))

    def broken():
        yield 1
        raise RuntimeError("disk gone")

    got = []
    with pytest.raises(RuntimeError, match="disk gone"):
        for x in prefetch(broken(), depth=2):
            got.append(x)
    assert got == [1]


def test_prefetch_stops_its_thread_when_the_consumer_stops_early():
    before = threading.active_count()
    for x in prefetch(iter(range(1000)), depth=2):
        if x == 3:
            break
    assert threading.active_count() == before


def test_training_matches_with_and_without_prefetch():
    def run(depth):
        torch.manual_seed(0)
        model = Recorder()
        settings = TrainSettings(0.1, max_epochs=2, patience=5, warmup_steps=0, prefetch_batches=depth)
        history = train(model, make_loader(_data(), 4, True), make_loader(_data(8, 1), 4, False), settings, "cpu")
        return [e["train_loss"] for e in history.epochs], model.emb.weight.detach().clone()

    (losses_a, w_a), (losses_b, w_b) = run(0), run(3)
    assert losses_a == losses_b and torch.equal(w_a, w_b)


def test_bf16_autocast_trains_and_evaluates():
    linear = nn.Linear(4, 4)
    with autocast("cpu", "bf16"):
        assert linear(torch.ones(1, 4)).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert linear(torch.ones(1, 4)).dtype == torch.float32
    torch.manual_seed(0)
    model = Recorder()
    settings = TrainSettings(0.1, max_epochs=1, patience=5, warmup_steps=0, precision="bf16")
    history = train(model, make_loader(_data(), 4, True), make_loader(_data(8, 1), 4, False), settings, "cpu")
    assert math.isfinite(history.epochs[0]["train_loss"]) and math.isfinite(history.epochs[0]["dev_loss"])
    with pytest.raises(ValueError, match="precision"):
        train(model, make_loader(_data(), 4, True), make_loader(_data(8, 1), 4, False),
              TrainSettings(0.1, 1, 5, warmup_steps=0, precision="fp8"), "cpu")


def test_token_head_loss_counts_only_labelled_tokens():
    head = TokenClassificationHead(4, 3, dropout=0.0)
    logits = torch.randn(2, 5, 3)
    batch = {"labels": torch.tensor([[IGNORE, 1, IGNORE, 2, IGNORE], [IGNORE, 0, IGNORE, IGNORE, IGNORE]]),
             "attention_mask": torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])}
    total, count = head.loss(logits, batch)
    expected = -sum(torch.log_softmax(logits[i, j], -1)[c] for i, j, c in [(0, 1, 1), (0, 3, 2), (1, 1, 0)])
    assert count == 3 and total.item() == pytest.approx(expected.item(), rel=1e-5)
    rows = head.unbatch(logits, batch)
    assert [r.shape[0] for r in rows] == [5, 3]


def test_mean_pooling_ignores_padding():
    head = SequenceClassificationHead(2, 2, dropout=0.0, pooling="mean")
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert head.pool(hidden, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 3.0]]
    assert SequenceClassificationHead(2, 2, 0.0, "cls").pool(hidden, torch.tensor([[1, 1, 0]])).tolist() == [[1.0, 2.0]]


class DropoutRecorder(Recorder):
    """Recorder with dropout, so a resumed run must also restore the random generators to match."""

    def forward(self, batch):
        return nn.functional.dropout(super().forward(batch), 0.3, self.training)


class Killed(Exception):
    pass


def _run_with_checkpoint(checkpoint, kill_after=None, monkeypatch=None):
    import recycling.trainer as trainer

    torch.manual_seed(0)
    model = DropoutRecorder()
    if kill_after is not None:
        real, calls = trainer.evaluate, []

        def dying_evaluate(*args, **kwargs):
            calls.append(1)
            if len(calls) > kill_after:  # dies during the epoch after `kill_after` finished ones
                raise Killed
            return real(*args, **kwargs)
        monkeypatch.setattr(trainer, "evaluate", dying_evaluate)
    settings = TrainSettings(0.1, max_epochs=4, patience=4, warmup_steps=3, weight_decay=0.01)
    history = train(model, make_loader(_lengths_dataset(40), 4, True, seed=3, group_batches=2),
                    make_loader(_data(8, 1), 4, False), settings, "cpu", checkpoint=checkpoint)
    return history, model.emb.weight.detach().clone()


@pytest.mark.parametrize("kill_after", [1, 3])
def test_a_killed_run_resumes_from_its_last_epoch_and_ends_as_if_never_stopped(tmp_path, monkeypatch, kill_after):
    from recycling.trainer import Checkpoint

    reference, weights = _run_with_checkpoint(None)
    ckpt = Checkpoint(tmp_path / "run.pt", {"mode": "toy", "seed": 0})
    with pytest.raises(Killed):
        _run_with_checkpoint(ckpt, kill_after, monkeypatch)
    monkeypatch.undo()
    assert ckpt.path.is_file() and not list(tmp_path.glob(".*.tmp"))
    resumed, resumed_weights = _run_with_checkpoint(Checkpoint(ckpt.path, ckpt.identity, resume=True))
    strip = lambda h: [{k: v for k, v in e.items() if k != "train_seconds"} for e in h.epochs]  # noqa: E731
    assert strip(resumed) == strip(reference) and resumed.best_epoch == reference.best_epoch
    assert resumed.optimizer_steps == reference.optimizer_steps
    assert torch.equal(resumed_weights, weights)


def test_a_checkpoint_of_another_run_or_a_damaged_one_is_refused(tmp_path):
    from recycling.errors import UserError
    from recycling.trainer import Checkpoint
    from tests import faults

    path = tmp_path / "run.pt"
    _run_with_checkpoint(Checkpoint(path, {"mode": "toy", "seed": 0}))
    with pytest.raises(UserError, match="belongs to another run.*seed") as err:
        _run_with_checkpoint(Checkpoint(path, {"mode": "toy", "seed": 1}, resume=True))
    faults.record("training", "`--resume` with a checkpoint written by another seed", str(err.value), tmp_path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match="cannot be read") as err:
        _run_with_checkpoint(Checkpoint(path, {"mode": "toy", "seed": 0}, resume=True))
    faults.record("training", "`--resume` with a truncated checkpoint", str(err.value), tmp_path)


def test_iterating_a_loader_leaves_the_random_stream_of_dropout_alone():
    # Found on SQuAD: an extra iter() of the train loader (tqdm made one) moved every dropout mask.
    data = _lengths_dataset(20)
    for loader in (make_loader(data, 4, True, 0, True, group_batches=None),
                   make_loader(data, 4, True, 0, True, group_batches=2),
                   make_loader(data, 4, True, 0, False), make_loader(data, 4, False)):
        torch.manual_seed(0)
        before = torch.get_rng_state()
        for _ in range(2):
            list(loader)
        iter(loader)
        assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("bound", [None, 0.01])
def test_max_grad_norm_clips_what_the_optimizer_sees(monkeypatch, bound):
    seen = []
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    torch.manual_seed(0)
    settings = TrainSettings(0.1, max_epochs=2, patience=5, warmup_steps=0, max_grad_norm=bound)
    history = train(Recorder(), make_loader(_data(), 4, True), make_loader(_data(4, 1), 4, False), settings, "cpu")
    assert len(seen) == 2 * 4 and max(seen) > 0
    if bound is None:
        assert max(seen) > 0.01  # the bound below would bite on this data
        assert all("max_grad_norm_before_clip" not in e for e in history.epochs)
    else:
        assert max(seen) <= bound * (1 + 1e-4)
        assert all(e["max_grad_norm_before_clip"] > bound for e in history.epochs)
