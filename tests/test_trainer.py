import torch
from torch import nn

from recycling.batches import TokenizedSplit, collate_hidden, make_loader
from recycling.trainer import TrainSettings, evaluate, train


class Recorder(nn.Module):
    """A linear classifier over a bag of token ids that records how each forward was run."""

    def __init__(self):
        super().__init__()
        self.emb = nn.EmbeddingBag(20, 2, mode="sum")
        self.calls = []

    def forward(self, batch):
        self.calls.append((self.training, torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        return self.emb(batch["input_ids"], per_sample_weights=batch["attention_mask"].float())


def _data(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids, labels = [], []
    for i in range(n):
        label = i % 2
        length = int(torch.randint(2, 7, (1,), generator=g))
        ids.append([1 + label] * length + [3])  # token 1 -> class 0, token 2 -> class 1
        labels.append(label)
    return TokenizedSplit(ids, labels, pad_id=0)


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


def test_training_learns_and_restores_the_best_epoch():
    model = Recorder()
    history = train(model, make_loader(_data(), 4, True), make_loader(_data(8, 1), 4, False),
                    TrainSettings(0.5, max_epochs=4, patience=4, warmup_steps=0), "cpu")
    losses = [e["dev_loss"] for e in history.epochs]
    assert history.best_epoch == 1 + losses.index(min(losses))
    assert evaluate(model, make_loader(_data(8, 1), 4, False), "cpu").loss == min(losses)
    result = evaluate(model, make_loader(_data(8, 1), 4, False), "cpu")
    assert result.pred == result.gold


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


def test_each_epoch_reshuffles_with_a_reproducible_order():
    data = TokenizedSplit([[i + 1] for i in range(12)], [0] * 12, 0)

    def orders(seed):
        loader = make_loader(data, 3, shuffle=True, seed=seed, group_by_length=False)
        return [[b["input_ids"][:, 0].tolist() for b in loader] for _ in range(2)]

    first, second = orders(5)
    assert first != second  # a new order every epoch
    assert orders(5) == [first, second]  # the same orders for the same seed


def test_batches_are_padded_to_their_own_longest_example():
    data = TokenizedSplit([[5] * 3, [5] * 9, [5] * 4, [5] * 2], [0, 1, 0, 1], 0)
    widths = sorted(b["input_ids"].shape[1] for b in make_loader(data, 2, shuffle=False))
    assert widths == [3, 9]  # longest first: (9, 4) then (3, 2)
    items = [(torch.ones(2, 4), 0), (torch.ones(5, 4), 1)]
    batch = collate_hidden(items)
    assert batch["hidden"].shape == (2, 5, 4)
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["hidden"][0, 2:].abs().sum() == 0
