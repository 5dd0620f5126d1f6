"""Training loop: AdamW, linear warm-up/decay in optimizer steps, early stopping on a dev score.

Dev and test are only ever run under ``torch.inference_mode``: no gradient can reach the weights
from them (the original code called ``backward`` in its validation loop).

The loop never waits for the device within an epoch: losses are summed on the device and read once
at its end, and batches are prepared ahead in a background thread (``prefetch_batches``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from recycling.batches import prefetch, to_device
from recycling.config import PRECISIONS
from recycling.distributed import SINGLE, Processes
from recycling.errors import UserError
from recycling.files import atomic_path

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
    max_grad_norm: float | None = None  # clip the gradient norm to this before each step (None: no clipping)

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


def evaluate(model: nn.Module, loader, device, precision: str = "fp32", prefetch_batches: int = 2,
             procs: Processes = SINGLE) -> Evaluation:
    """Raw outputs and mean loss over a split; timed including the device sync.

    With several processes each evaluates its share of the batches (``make_loader(procs=...)``)
    and every process returns the outputs of all.
    """
    model.eval()
    outputs, total, n = [None] * len(loader.dataset), 0.0, 0
    mine = []
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode(), autocast(device, precision):
        for batch in prefetch(loader, prefetch_batches):
            batch = to_device(batch, device)
            out = model(batch)
            loss_sum, count = model.loss(out, batch)
            total, n = total + loss_sum, n + count
            mine.extend(zip(batch["index"].tolist(), model.unbatch(out, batch)))
    if procs.world > 1:
        mine = [pair for part in procs.gather(mine) for pair in part]
        total, n = (sum(values) for values in zip(*procs.gather((float(total), float(n)))))
    for i, row in mine:
        outputs[i] = row
    synchronize(device)
    return Evaluation(outputs, float(total) / max(float(n), 1), time.perf_counter() - start)


@dataclass
class Checkpoint:
    """Where a run keeps its state at the end of every epoch, and whether to continue from it.

    ``identity`` describes what the run computes (mode, seed, settings); a checkpoint written with
    another identity is refused rather than continued into a run it does not belong to.
    """

    path: Path
    identity: dict
    resume: bool = False


def _loader_generator(loader) -> torch.Generator | None:
    """The generator that draws a shuffled loader's order (its state moves on every epoch)."""
    for sampler in (getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
        generator = getattr(sampler, "generator", None)
        if isinstance(generator, torch.Generator):
            return generator
    return None


def _save_checkpoint(checkpoint: Checkpoint, model, optimizer, scheduler, history: TrainHistory, best: float,
                     best_state, bad_epochs: int, generator) -> None:
    state = {
        "identity": checkpoint.identity, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "history": dataclasses.asdict(history), "best": best,
        "best_state": best_state, "bad_epochs": bad_epochs, "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader_rng": None if generator is None else generator.get_state(),
    }
    with atomic_path(checkpoint.path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(checkpoint: Checkpoint) -> dict:
    try:
        # weights_only: a checkpoint is data, never code, even if it came from somewhere else.
        state = torch.load(checkpoint.path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file; all mean the same here
        raise UserError(f"checkpoint {checkpoint.path} cannot be read ({type(err).__name__}); "
                        "delete it to start this run again") from None
    if not isinstance(state, dict) or state.get("identity") != checkpoint.identity:
        saved = state.get("identity", {}) if isinstance(state, dict) else {}
        differ = sorted(k for k in set(saved) | set(checkpoint.identity)
                        if saved.get(k) != checkpoint.identity.get(k))
        raise UserError(f"checkpoint {checkpoint.path} belongs to another run (differs in "
                        f"{', '.join(differ) or 'its layout'}); delete it or run without --resume")
    return state


def train(model: nn.Module, train_loader, dev_loader, settings: TrainSettings, device,
          dev_score: Callable[[Evaluation], float] | None = None,
          checkpoint: Checkpoint | None = None, procs: Processes = SINGLE) -> TrainHistory:
    """Train the parameters that require grad; on return the model holds the best epoch's weights.

    The best epoch has the lowest dev loss, or the highest ``dev_score`` when one is given. With a
    ``checkpoint``, the whole state (weights, optimizer, schedule, random generators, history) is
    written atomically after every epoch, and ``checkpoint.resume`` continues a killed run from its
    last finished epoch exactly as if it had not stopped.

    With several processes (``procs``; loaders from ``make_loader(procs=...)``) the model is
    wrapped in DistributedDataParallel: each process computes its share of every batch, and each
    step's loss is divided by the count of loss terms over all processes, so the averaged gradient
    is the one of the whole batch. The main process alone writes the checkpoint.
    """
    forward = model
    if procs.world > 1:
        where = torch.device(device)
        forward = nn.parallel.DistributedDataParallel(model, device_ids=None if where.type == "cpu" else [where])
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
    generator = _loader_generator(train_loader)
    if checkpoint is not None and checkpoint.resume and checkpoint.path.is_file():
        state = _load_checkpoint(checkpoint)
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = TrainHistory(**state["history"])
        best, best_state, bad_epochs = state["best"], state["best_state"], state["bad_epochs"]
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if generator is not None and state["loader_rng"] is not None:
            generator.set_state(state["loader_rng"])
        logger.info("resuming from %s after epoch %d", checkpoint.path, len(history.epochs))
    for epoch in range(len(history.epochs) + 1, settings.max_epochs + 1):
        if history.stopped_early:  # a resumed run whose last checkpoint already decided to stop
            break
        model.train()
        optimizer.zero_grad(set_to_none=True)
        running, seen = 0.0, 0  # device tensors once the first step adds to them
        norms = []  # gradient norms before clipping, kept on the device (no sync per step)
        synchronize(device)
        start = time.perf_counter()
        batches = prefetch(train_loader, settings.prefetch_batches)
        for i, batch in enumerate(tqdm(batches, total=len(train_loader), desc=f"epoch {epoch}", leave=False,
                                       disable=None)):
            batch = to_device(batch, device)
            with autocast(device, settings.precision):
                loss_sum, count = model.loss(forward(batch), batch)
            share = count
            if procs.world > 1:  # this process's count of the batch's loss terms, for the average over all
                share = procs.sum(torch.as_tensor(count, dtype=torch.float32, device=device)) / procs.world
            (loss_sum / share / settings.grad_accum_steps).backward()
            running, seen = running + loss_sum.detach(), seen + count
            if (i + 1) % settings.grad_accum_steps == 0 or i + 1 == len(train_loader):
                if settings.max_grad_norm is not None:
                    # Under DDP the gradients are already averaged, so every process clips alike.
                    norms.append(torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm))
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                history.optimizer_steps += 1
        synchronize(device)
        seconds = time.perf_counter() - start
        if procs.world > 1:
            running, seen = (sum(values) for values in zip(*procs.gather((float(running), float(seen)))))
        dev = evaluate(model, dev_loader, device, settings.precision, settings.prefetch_batches, procs)
        record = {"epoch": epoch, "train_loss": float(running) / max(float(seen), 1), "dev_loss": dev.loss,
                  "train_seconds": seconds}
        if norms:  # far above the bound: clipping changed the run; below it: clipping never acted
            record["max_grad_norm_before_clip"] = float(torch.stack(norms).max())
        if not (math.isfinite(record["train_loss"]) and math.isfinite(dev.loss)):
            raise UserError(f"training diverged in epoch {epoch} (train loss {record['train_loss']}, dev loss "
                            f"{dev.loss}); nothing of this run is kept: lower the learning rate or weight decay")
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
            history.stopped_early = bad_epochs >= settings.patience
        if checkpoint is not None and procs.main:
            _save_checkpoint(checkpoint, model, optimizer, scheduler, history, best, best_state, bad_epochs,
                             generator)
        if history.stopped_early:
            break
    if best_state is not None:
        model.load_state_dict(best_state, strict=True)
    return history
