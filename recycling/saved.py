"""Saved task models: the trained part of a model in safetensors, with what it needs to run again.

A folder holds ``model.safetensors`` (the upper layers, or the whole encoder in a text mode, with
adapters and head) and ``model.json`` (mode, resolved config, task description and, for cached
modes, the SHA-256 of the lower part whose cache it reads; for ``cross_model``, that of the source
model and the width of its states). A model trained on a compressed cache
also keeps its codec (``codec.safetensors``): new data must be encoded exactly as its training data was. Loading rebuilds the same model from
the pretrained encoder and restores the weights strictly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from cache_builder import codecs
from cache_builder.build import tensors_sha256

from recycling.config import CACHED_MODES, MODES, SOURCE_MODES, ExperimentConfig, from_dict
from recycling.errors import UserError
from recycling.files import atomic_path, write_json
from recycling.models import TaskModel, UpperSettings, build_model

WEIGHTS, INFO = "model.safetensors", "model.json"
INFO_SHA256 = "model_json_sha256"  # safetensors metadata key
FORMAT = 1


def save(folder: str | Path, model: TaskModel, mode: str, config: ExperimentConfig, description: dict,
         lower_weights_sha256: str | None) -> Path:
    """Write the model's weights, then its info; a folder is a saved model only once both exist."""
    folder = Path(folder)
    info = {"format": FORMAT, "mode": mode, "cut_layer": config.cut_layer, "config": dataclasses.asdict(config),
            "data": description, "lower_weights_sha256": lower_weights_sha256 if mode in CACHED_MODES else None}
    if model.bridge is not None:  # cross_model: the source model its cached input comes from, and its width
        info |= {"source_weights_sha256": lower_weights_sha256, "source_size": model.bridge.net[0].in_features}
    if model.codec is not None:
        tensors = model.codec.tensors()
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / codecs.PARAMS_FILE) as tmp:
            save_file(tensors, str(tmp))
        info["codec"] = {"name": model.codec.name, "sha256": tensors_sha256(tensors)}
    with atomic_path(folder / WEIGHTS) as tmp:
        # The weights carry their info's hash: an edited or swapped model.json is caught on loading.
        save_model(model, str(tmp), metadata={INFO_SHA256: _info_sha256(info)})  # save_model handles tied weights
    write_json(folder / INFO, info)
    return folder


def _info_sha256(info: dict) -> str:
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()


def _weights_metadata(path: Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path} is not a readable safetensors file ({str(err).splitlines()[0][:200]})") from None


def read_info(folder: str | Path) -> tuple[dict, ExperimentConfig]:
    """The saved model's info and its config, checked like a config file; every problem is a UserError."""
    folder = Path(folder)
    if not (folder / INFO).is_file() or not (folder / WEIGHTS).is_file():
        raise UserError(f"no saved model in {folder} (expected {INFO} and {WEIGHTS})")
    try:
        info = json.loads((folder / INFO).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{folder / INFO} is not readable JSON ({type(err).__name__})") from None
    if not isinstance(info, dict) or info.get("mode") not in MODES or not isinstance(info.get("data"), dict):
        raise UserError(f"{folder / INFO} is not the info of a saved model (mode, config, data)")
    if info.get("format", FORMAT) != FORMAT:
        raise UserError(f"{folder / INFO} has format {info.get('format')!r}; this version reads format {FORMAT}")
    for key in ("label_names", "tag_names"):
        names = info["data"].get(key)
        if names is not None and (not isinstance(names, list) or len(set(map(str, names))) != len(names)):
            raise UserError(f"{folder / INFO}: data.{key} must list each name once, got {names!r}")
    recorded = _weights_metadata(folder / WEIGHTS).get(INFO_SHA256)
    if recorded is not None and recorded != _info_sha256(info):  # models saved before the hash have none
        raise UserError(f"{folder / INFO} is not the info these weights were saved with (edited or swapped); "
                        "save the model again")
    config = from_dict(info.get("config"), str(folder / INFO))
    if info["mode"] in CACHED_MODES and not isinstance(info.get("lower_weights_sha256"), str):
        raise UserError(f"{folder / INFO} has no fingerprint of the lower part its cache must come from")
    if info["mode"] in SOURCE_MODES and not (isinstance(info.get("source_weights_sha256"), str)
                                             and isinstance(info.get("source_size"), int)):
        raise UserError(f"{folder / INFO} has no fingerprint or width of the source model its input comes from")
    if (config.cache_codec is not None and info["mode"] in CACHED_MODES + SOURCE_MODES) != ("codec" in info):
        raise UserError(f"{folder / INFO} does not match its config's cache_codec ({config.cache_codec})")
    return info, config


def load_codec(folder: str | Path, info: dict) -> codecs.Codec | None:
    """The codec a model trained on a compressed cache was trained with (None for other models)."""
    if "codec" not in info:
        return None
    path = Path(folder) / codecs.PARAMS_FILE
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path} is not a readable codec file ({str(err).splitlines()[0][:200]})") from None
    if tensors_sha256(tensors) != info["codec"]["sha256"]:
        raise UserError(f"{path} is not the codec this model was trained with (its checksum differs)")
    return codecs.load(info["codec"]["name"], tensors)


def load(folder: str | Path, info: dict, config: ExperimentConfig, base, task, data) -> TaskModel:
    """The saved model (``info, config = read_info(folder)``), rebuilt on ``base``, the pretrained
    encoder named in its config."""
    model = build_model(info["mode"], base, config.cut_layer, lambda: task.head(data, base, config),
                        UpperSettings.of(config, info.get("source_size")), seed=0)
    try:
        load_model(model, str(Path(folder) / WEIGHTS), strict=True)
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:  # a damaged file; other shapes or names
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{Path(folder) / WEIGHTS} does not fit the model it describes ({first[:200]})") from None
    return model.eval()
