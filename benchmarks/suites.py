"""What each benchmark suite measures: models, step-level shapes, the real-data epoch, repeats.

``cpu`` fits a 2-core machine (about 40 minutes) with the two offline pretrained encoders; ``gpu``
has the paper's model shapes and the two offline models' shapes with random weights (the weights
would not fit the 64 MiB a device call carries, and timing does not depend on them), its real-data
epochs tokenized by ``--tokenizer``; ``smoke`` is for trying the command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class EpochSpec:
    """One real-data training epoch per setting, through the runner's own data path and trainer."""

    task: str = "text_classification"
    dataset: str = "sciie-relation-extraction"
    max_examples: dict = field(default_factory=lambda: {"train": 1000, "dev": 250, "test": 250})
    max_length: int = 512
    batch_size: int = 32
    eval_batch_size: int = 64
    epochs_per_experiment: int = 3  # for the "K experiments reusing one cache" amortization


@dataclass(frozen=True)
class ModelSpec:
    """``offline:<name>`` (real weights, with tokenizer) or ``config:<file stem>`` under configs/
    (random weights: timing does not depend on the weights; nothing comes from a hub)."""

    name: str
    grid: tuple[tuple[int, int], ...]  # (sequence length, batch size) of the step-level points
    # Real data needs a tokenizer: a pretrained model's own, or ``--tokenizer`` for a random one.
    epoch: EpochSpec | None = None

    @property
    def weights(self) -> str:
        return "random" if self.name.startswith("config:") else "pretrained"


@dataclass(frozen=True)
class Suite:
    models: tuple[ModelSpec, ...]
    repeats: int  # timed steps per setting (medians reported)
    warmup: int  # untimed steps per setting first
    precision: str = "fp32"  # fp32 | bf16 autocast (GPU)
    cache_dtype: str = "float16"
    adapter_size: int = 64
    # Compressed caches whose read + decode per epoch is timed against the plain cache (codec, dim).
    codecs: tuple[tuple[str, int | None], ...] = ()


CODECS = (("int8", None), ("pca", 96), ("autoencoder", 96), ("pca", 48))
SEQ_SCALING = ((128, 8), (256, 8), (512, 8))
BATCH_SCALING = ((128, 16), (128, 32), (128, 64))
GPU_GRID = ((128, 32), (256, 32), (512, 32), (256, 8), (256, 16), (256, 64))
GPU_EPOCH = EpochSpec(max_examples={"train": 3219, "dev": 455, "test": 974})  # all of SciERC relations

SUITES = {
    "smoke": Suite(
        models=(
            ModelSpec("config:tiny-bert", grid=((16, 4), (32, 4))),
            ModelSpec("offline:all-MiniLM-L6-v2", grid=((16, 2),), epoch=EpochSpec(
                max_examples={"train": 24, "dev": 8, "test": 8}, max_length=64, batch_size=8,
                eval_batch_size=8)),
        ),
        repeats=2, warmup=1, codecs=(("int8", None), ("pca", 8))),
    "cpu": Suite(
        models=(
            ModelSpec("offline:all-MiniLM-L6-v2", grid=SEQ_SCALING + BATCH_SCALING, epoch=EpochSpec()),
            ModelSpec("offline:all-mpnet-base-v2", grid=SEQ_SCALING,
                      epoch=EpochSpec(max_examples={"train": 320, "dev": 96, "test": 96})),
        ),
        repeats=5, warmup=2, codecs=CODECS),
    "gpu": Suite(
        models=(
            ModelSpec("config:all-MiniLM-L6-v2", grid=GPU_GRID, epoch=GPU_EPOCH),
            ModelSpec("config:all-mpnet-base-v2", grid=GPU_GRID, epoch=GPU_EPOCH),
            ModelSpec("config:bert-base-uncased", grid=GPU_GRID, epoch=GPU_EPOCH),
            ModelSpec("config:roberta-large", grid=GPU_GRID),
            ModelSpec("config:deberta-v2-xlarge", grid=GPU_GRID),
            ModelSpec("config:t5-large-encoder", grid=GPU_GRID),
        ),
        repeats=10, warmup=3, precision="bf16", cache_dtype="bfloat16", codecs=CODECS),
}
