"""Training loop: AdamW, linear warm-up/decay in optimizer steps, early stopping on dev loss.

Dev and test are only ever run under ``torch.inference_mode``: no gradient can reach the weights
from them (the original code called ``backward`` in its validation loop).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.functional import cross_entropy
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from recycling.batches import to_device

logger = logging.getLogger(__name__)


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class TrainSettings:
    learning_rate: float
    max_epochs: int
    patience: int
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_accum_steps: int = 1


@dataclass
class TrainHistory:
    epochs: list[dict] = field(default_factory=list)  # epoch, train_loss, dev_loss, train_seconds
    best_epoch: int = 0
    stopped_early: bool = False
    optimizer_steps: int = 0


@dataclass
class Predictions:
    gold: list[int]
    pred: list[int]
    loss: float
    seconds: float


def evaluate(model: nn.Module, loader, device) -> Predictions:
    """Mean loss and argmax predictions; timed including the device sync."""
    model.eval()
    gold, pred, total, n = [], [], 0.0, 0
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in loader:
            batch = to_device(batch, device)
            logits = model(batch)
            total += cross_entropy(logits.float(), batch["labels"], reduction="sum").item()
            n += len(batch["labels"])
            gold.extend(batch["labels"].tolist())
            pred.extend(logits.argmax(-1).tolist())
    synchronize(device)
    return Predictions(gold, pred, total / n, time.perf_counter() - start)


def train(model: nn.Module, train_loader, dev_loader, settings: TrainSettings, device) -> TrainHistory:
    """Train the parameters that require grad; on return the model holds the best-dev-loss weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(train_loader) / settings.grad_accum_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, settings.warmup_steps,
                                                steps_per_epoch * settings.max_epochs)
    history = TrainHistory()
    best_loss, best_state, bad_epochs = math.inf, None, 0
    for epoch in range(1, settings.max_epochs + 1):
        model.train()
        optimizer.zero_grad(set_to_none=True)
        running, seen = 0.0, 0
        synchronize(device)
        start = time.perf_counter()
        for i, batch in enumerate(tqdm(train_loader, desc=f"epoch {epoch}", leave=False, disable=None)):
            batch = to_device(batch, device)
            loss = cross_entropy(model(batch).float(), batch["labels"])
            (loss / settings.grad_accum_steps).backward()
            running += loss.item() * len(batch["labels"])
            seen += len(batch["labels"])
            if (i + 1) % settings.grad_accum_steps == 0 or i + 1 == len(train_loader):
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                history.optimizer_steps += 1
        synchronize(device)
        seconds = time.perf_counter() - start
        dev = evaluate(model, dev_loader, device)
        history.epochs.append({"epoch": epoch, "train_loss": running / seen, "dev_loss": dev.loss,
                               "train_seconds": seconds})
        logger.info("epoch %d: train loss %.4f, dev loss %.4f, %.1fs", epoch, running / seen, dev.loss, seconds)
        if dev.loss < best_loss:
            best_loss, bad_epochs, history.best_epoch = dev.loss, 0, epoch
            best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        else:
            bad_epochs += 1
            if bad_epochs >= settings.patience:
                history.stopped_early = True
                break
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    return history
