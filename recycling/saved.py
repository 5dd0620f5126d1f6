"""Saved task models: the trained part of a model in safetensors, with what it needs to run again.

A folder holds ``model.safetensors`` (the upper layers, or the whole encoder in a text mode, with
adapters and head) and ``model.json`` (mode, resolved config, task description and, for cached
modes, the SHA-256 of the lower part whose cache it reads). Loading rebuilds the same model from
the pretrained encoder and restores the weights strictly.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from safetensors.torch import load_model, save_model

from recycling.config import CACHED_MODES, ExperimentConfig
from recycling.errors import UserError
from recycling.files import write_json
from recycling.models import TaskModel, build_model

WEIGHTS, INFO = "model.safetensors", "model.json"


def save(folder: str | Path, model: TaskModel, mode: str, config: ExperimentConfig, description: dict,
         lower_weights_sha256: str | None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (WEIGHTS + ".tmp")
    save_model(model, str(tmp))  # handles tied weights, unlike save_file
    os.replace(tmp, folder / WEIGHTS)
    write_json(folder / INFO, {"mode": mode, "config": dataclasses.asdict(config), "data": description,
                               "lower_weights_sha256": lower_weights_sha256 if mode in CACHED_MODES else None})
    return folder


def read_info(folder: str | Path) -> tuple[dict, ExperimentConfig]:
    folder = Path(folder)
    if not (folder / INFO).is_file() or not (folder / WEIGHTS).is_file():
        raise UserError(f"no saved model in {folder} (expected {INFO} and {WEIGHTS})")
    info = json.loads((folder / INFO).read_text())
    return info, ExperimentConfig(**info["config"])


def load(folder: str | Path, base, task, data) -> TaskModel:
    """The saved model, rebuilt on ``base`` (the pretrained encoder named in its config)."""
    info, config = read_info(folder)
    model = build_model(info["mode"], base, config.cut_layer, lambda: task.head(data, base, config),
                        config.adapter_size, seed=0)
    load_model(model, str(Path(folder) / WEIGHTS), strict=True)
    return model.eval()
