"""Training loop: AdamW, linear warm-up/decay in optimizer steps, early stopping on a dev score.

Dev and test are only ever run under ``torch.inference_mode``: no gradient can reach the weights
from them (the original code called ``backward`` in its validation loop).

The loop never waits for the device within an epoch: losses are summed on the device and read once
at its end, and batches are prepared ahead in a background thread (``prefetch_batches``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from recycling.batches import prefetch, to_device
from recycling.config import PRECISIONS

logger = logging.getLogger(__name__)


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device, precision: str):
    """bf16 autocast (matmuls in bfloat16, reductions and the loss in float32) or plain float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                          enabled=precision == "bf16")


@dataclass
class TrainSettings:
    learning_rate: float
    max_epochs: int
    patience: int
    warmup_steps: int = 100
    warmup_ratio: float | None = None  # when set, replaces warmup_steps
    weight_decay: float = 0.0
    grad_accum_steps: int = 1
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    prefetch_batches: int = 2  # batches prepared ahead in a background thread (0: none)

    def warmup(self, total_steps: int) -> int:
        if self.warmup_ratio is None:
            return self.warmup_steps
        return math.ceil(self.warmup_ratio * total_steps)


@dataclass
class TrainHistory:
    epochs: list[dict] = field(default_factory=list)  # epoch, train_loss, dev_loss, [dev_score], train_seconds
    best_epoch: int = 0
    stopped_early: bool = False
    optimizer_steps: int = 0
    warmup_steps: int = 0


@dataclass
class Evaluation:
    outputs: list  # the head's raw output for each feature, in the split's feature order
    loss: float  # mean over the head's loss terms (examples, or labelled tokens)
    seconds: float


def evaluate(model: nn.Module, loader, device, precision: str = "fp32", prefetch_batches: int = 2) -> Evaluation:
    """Raw outputs and mean loss over a split; timed including the device sync."""
    model.eval()
    outputs, total, n = [None] * len(loader.dataset), 0.0, 0
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode(), autocast(device, precision):
        for batch in prefetch(loader, prefetch_batches):
            batch = to_device(batch, device)
            out = model(batch)
            loss_sum, count = model.loss(out, batch)
            total, n = total + loss_sum, n + count
            for i, row in zip(batch["index"].tolist(), model.unbatch(out, batch)):
                outputs[i] = row
    synchronize(device)
    return Evaluation(outputs, float(total) / max(float(n), 1), time.perf_counter() - start)


def train(model: nn.Module, train_loader, dev_loader, settings: TrainSettings, device,
          dev_score: Callable[[Evaluation], float] | None = None) -> TrainHistory:
    """Train the parameters that require grad; on return the model holds the best epoch's weights.

    The best epoch has the lowest dev loss, or the highest ``dev_score`` when one is given.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(train_loader) / settings.grad_accum_steps)
    total_steps = steps_per_epoch * settings.max_epochs
    history = TrainHistory(warmup_steps=settings.warmup(total_steps))
    if history.warmup_steps > total_steps // 2:
        # A fixed count meant for a large dataset can eat most of a short run (seen: 100 of 159 steps).
        logger.warning("warm-up takes %d of the run's %d optimizer steps; consider warmup_ratio (e.g. 0.1)",
                       history.warmup_steps, total_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, history.warmup_steps, total_steps)
    best, best_state, bad_epochs = -math.inf, None, 0
    for epoch in range(1, settings.max_epochs + 1):
        model.train()
        optimizer.zero_grad(set_to_none=True)
        running, seen = 0.0, 0  # device tensors once the first step adds to them
        synchronize(device)
        start = time.perf_counter()
        batches = prefetch(train_loader, settings.prefetch_batches)
        for i, batch in enumerate(tqdm(batches, total=len(train_loader), desc=f"epoch {epoch}", leave=False,
                                       disable=None)):
            batch = to_device(batch, device)
            with autocast(device, settings.precision):
                loss_sum, count = model.loss(model(batch), batch)
            (loss_sum / count / settings.grad_accum_steps).backward()
            running, seen = running + loss_sum.detach(), seen + count
            if (i + 1) % settings.grad_accum_steps == 0 or i + 1 == len(train_loader):
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                history.optimizer_steps += 1
        synchronize(device)
        seconds = time.perf_counter() - start
        dev = evaluate(model, dev_loader, device, settings.precision, settings.prefetch_batches)
        record = {"epoch": epoch, "train_loss": float(running) / max(float(seen), 1), "dev_loss": dev.loss,
                  "train_seconds": seconds}
        score = -dev.loss
        if dev_score is not None:
            score = record["dev_score"] = dev_score(dev)
        history.epochs.append(record)
        logger.info("epoch %d: train loss %.4f, dev loss %.4f%s, %.1fs", epoch, record["train_loss"], dev.loss,
                    f", dev score {score:.4f}" if dev_score is not None else "", seconds)
        if score > best:
            best, bad_epochs, history.best_epoch = score, 0, epoch
            # On the CPU: a copy on the accelerator would double the model's memory there.
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
            if bad_epochs >= settings.patience:
                history.stopped_early = True
                break
    if best_state is not None:
        model.load_state_dict(best_state, strict=True)
    return history
