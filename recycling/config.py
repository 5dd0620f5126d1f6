"""Typed experiment configuration: a defaults YAML, short per-experiment files, ``--set`` overrides.

An experiment file names the file it extends with ``base:`` (a path relative to itself); keys it
sets replace the base's, except mappings such as ``learning_rate``, which are merged key by key.
Unknown keys and wrong types are errors that name the key and the file (or ``--set``) they came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from recycling.errors import UserError
from recycling.files import check_plain_name, read_bytes

from recycling.tasks import METRICS

MODES = ("full", "semi_frozen", "adapters", "adapters_full", "lora", "lora_full", "cross_model")
DEFAULT_MODES = MODES[:4]  # the paper's; the LoRA and cross-model modes are opt-in
CACHED_MODES = ("semi_frozen", "adapters", "lora")  # read the cache of `model`'s lower layers
# Read the cache of another model (`source_model`'s final layer) beside their own text input.
SOURCE_MODES = ("cross_model",)
BASELINE_OF = {"semi_frozen": "full", "adapters": "adapters_full", "lora": "lora_full", "cross_model": "full"}
# Settings a mode never reads: a sweep over them runs that mode once, not again at every point.
_LORA_KEYS = ("lora_rank", "lora_alpha")
_CACHE_KEYS = ("cache_dtype", "cache_codec", "cache_codec_dim")
_OWN = {"full": ("cut_layer", *_CACHE_KEYS, "adapter_size", *_LORA_KEYS),
        "semi_frozen": ("adapter_size", *_LORA_KEYS), "adapters": _LORA_KEYS,
        "adapters_full": (*_CACHE_KEYS, *_LORA_KEYS), "lora": ("adapter_size",),
        "lora_full": (*_CACHE_KEYS, "adapter_size")}
IGNORED_BY = {mode: (*keys, "source_model") for mode, keys in _OWN.items()} | {
    "cross_model": ("cut_layer", "adapter_size", *_LORA_KEYS)}
CODECS = ("int8", "pca", "autoencoder")  # cache_builder.codecs
DIM_CODECS = ("pca", "autoencoder")
POOLINGS = ("cls", "mean")
WINDOWED_TASKS = ("ner", "qa")  # tasks that split long texts into windows (window_stride applies)
SELECT_ON = ("dev_loss", "dev_metric")
# Keys that do not change what a finished run computed: a result file whose runs differ from the
# current config only in these can be resumed and extended.
NOT_COMPUTATION = ("seeds", "modes", "cache_dir", "cache_batch_size", "eval_batch_size", "device", "compile",
                   "prefetch_batches", "verify_cache", "trust_remote_code")
PRECISIONS = ("fp32", "bf16")
# Keys whose default changed: a result file without the key was computed with this value.
LEGACY_DEFAULTS = {"length_group_batches": None}


@dataclass
class ExperimentConfig:
    dataset: str
    model: str  # hub id, local folder or offline:<name>
    cut_layer: int  # layers 0..cut_layer-1 are frozen and cached
    task: str = "text_classification"
    modes: list[str] = field(default_factory=lambda: list(DEFAULT_MODES))
    seeds: list[int] = field(default_factory=lambda: [0])
    metric: str = "micro_f1"  # the one the summary table reports (and dev_metric selection uses)
    max_length: int = 512  # tokens per feature, special tokens included
    window_stride: int = 64  # tokens shared by consecutive windows of a longer text (NER, QA)
    # QA: SQuAD-format files in <data_dir>/qa/<dataset>/; without a dev file, dev is a held-out
    # fraction of train's articles (no paragraph in both), since the official dev set plays test.
    qa_train_file: str = "train-v1.1.json"
    qa_dev_file: typing.Optional[str] = None
    qa_test_file: str = "dev-v1.1.json"
    dev_fraction: float = 0.05
    max_answer_length: int = 30  # tokens
    n_best: int = 20  # start and end candidates per window when decoding
    text_field: str = "text"
    label_field: str = "label"
    # Examples per split from the top of each file (an int for every split, or {split: n}); for quick runs.
    max_examples: typing.Union[int, dict[str, int], None] = None
    cache_dtype: str = "float16"
    # Compressed cache (cache_builder/codecs.py): int8 | pca | autoencoder, fitted on a sample of
    # train; pca and autoencoder store cache_codec_dim values per token (in cache_dtype).
    cache_codec: typing.Optional[str] = None
    cache_codec_dim: typing.Optional[int] = None
    cache_batch_size: int = 64
    cache_dir: typing.Optional[str] = None  # default: derived from the inputs under the cache root
    verify_cache: bool = False  # recompute the cache's checksums before training (reads the whole cache)
    batch_size: int = 32
    eval_batch_size: int = 64
    grad_accum_steps: int = 1
    group_by_length: bool = True  # batches of similar length: less padding, same for every mode
    # Training batches come from groups of this many batches sorted by length (recycling.batches.
    # LengthGroups); null: transformers' LengthGroupedSampler, which results before this key used.
    length_group_batches: typing.Optional[int] = 50
    learning_rate: dict[str, float] = field(default_factory=lambda: {m: 2e-5 for m in MODES})
    weight_decay: float = 0.0
    warmup_steps: int = 100  # optimizer steps; ignored when warmup_ratio is set
    warmup_ratio: typing.Optional[float] = None  # fraction of all optimizer steps spent warming up
    # Clip the trained parameters' gradient norm to this before each step (transformers' Trainer
    # clips at 1.0); unset: no clipping, as every result before this key was trained.
    max_grad_norm: typing.Optional[float] = None
    max_epochs: int = 10
    patience: int = 3  # epochs without a better dev score before stopping
    select_on: str = "dev_loss"  # dev_loss | dev_metric: which dev score picks the epoch kept
    adapter_size: int = 64  # bottleneck width b
    # LoRA (modes lora, lora_full): rank r and scale alpha of the updates of each upper layer's query
    # and value projections (recycling.models.LORA_TARGETS); the update is (alpha / r) * B A.
    lora_rank: int = 8
    lora_alpha: float = 16.0
    # cross_model: the model whose final-layer states (cached) are projected and added to `model`'s
    # input embeddings (recycling/cross_model.py); hub id, local folder or offline:<name>.
    source_model: typing.Optional[str] = None
    head_dropout: float = 0.1
    pooling: typing.Optional[str] = None  # cls | mean (sequence heads); default cls, mean for T5
    device: typing.Optional[str] = None  # default: cuda if available, else cpu
    trust_remote_code: bool = False  # run the model repository's own Python code (only for code you trust)
    precision: str = "fp32"  # fp32 | bf16: autocast to bfloat16 (for GPUs; the cache dtype is separate)
    compile: bool = False  # torch.compile the model (dynamic shapes): speed only, same computation
    prefetch_batches: int = 2  # batches prepared ahead in a background thread (0: none)
    # {key: [value, ...]}: run the experiment once per point of the grid (recycling/sweep.py)
    sweep: typing.Optional[dict[str, list]] = None

    def validate(self, sources: dict[str, str] | None = None) -> None:
        """Check values that types alone cannot; errors name the file each key came from."""

        def where(key):
            return f"{(sources or {}).get(key, 'config')}: key '{key}'"

        def bad(key, msg):
            return UserError(f"{where(key)} {msg}")

        check_plain_name(self.dataset, "dataset name", where("dataset"))
        for key in ("qa_train_file", "qa_dev_file", "qa_test_file"):
            if getattr(self, key) is not None:
                check_plain_name(getattr(self, key), "file name", where(key))
        for key in ("qa_dev_file", "qa_test_file"):
            if getattr(self, key) == self.qa_train_file:
                raise bad(key, f"names the training file '{self.qa_train_file}': selection and test need other data")
        if not self.modes:
            raise bad("modes", "must list at least one mode")
        if len(set(self.modes)) != len(self.modes):
            raise bad("modes", f"lists a mode twice: {self.modes}")
        for mode in self.modes:
            if mode not in MODES:
                raise bad("modes", f"has unknown mode '{mode}' (known: {', '.join(MODES)})")
        for mode in self.learning_rate:
            if mode not in MODES:
                raise bad("learning_rate", f"has unknown mode '{mode}' (known: {', '.join(MODES)})")
        missing = [m for m in self.modes if m not in self.learning_rate]
        if missing:
            raise bad("learning_rate", f"has no value for mode(s) {', '.join(missing)}")
        for mode, rate in self.learning_rate.items():
            if not (math.isfinite(rate) and rate > 0):
                raise bad("learning_rate", f"must be a positive number for every mode, got {rate} for {mode}")
        if not (math.isfinite(self.head_dropout) and 0 <= self.head_dropout < 1):
            raise bad("head_dropout", f"must be in [0, 1), got {self.head_dropout}")
        if not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise bad("lora_alpha", f"must be a positive number, got {self.lora_alpha}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise bad("weight_decay", f"must be at least 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise bad("warmup_steps", f"must be at least 0, got {self.warmup_steps}")
        if len(set(self.seeds)) != len(self.seeds):
            raise bad("seeds", f"lists a seed twice: {self.seeds}")
        if any(not 0 <= seed < 2**32 for seed in self.seeds):
            raise bad("seeds", f"must be in [0, 2**32), got {self.seeds}")
        if not self.text_field or not self.label_field:
            raise bad("text_field" if not self.text_field else "label_field", "must not be empty")
        if self.device is not None:
            check_device(self.device, where("device"))
        if self.task not in METRICS:
            raise bad("task", f"must be one of {', '.join(METRICS)}, got '{self.task}'")
        if self.metric not in METRICS[self.task]:
            raise bad("metric", f"must be one of {', '.join(METRICS[self.task])} for task {self.task}, "
                                f"got '{self.metric}'")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise bad("pooling", f"must be one of {', '.join(POOLINGS)}, got '{self.pooling}'")
        if self.select_on not in SELECT_ON:
            raise bad("select_on", f"must be one of {', '.join(SELECT_ON)}, got '{self.select_on}'")
        if self.warmup_ratio is not None and not (math.isfinite(self.warmup_ratio) and 0 <= self.warmup_ratio < 1):
            raise bad("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if self.max_grad_norm is not None and not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise bad("max_grad_norm", f"must be above 0, got {self.max_grad_norm}")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if self.length_group_batches is not None and self.length_group_batches < 1:
            raise bad("length_group_batches", f"must be at least 1 or null, got {self.length_group_batches}")
        if self.prefetch_batches < 0:
            raise bad("prefetch_batches", f"must be at least 0, got {self.prefetch_batches}")
        if self.cache_dtype not in ("float16", "bfloat16", "float32"):
            raise bad("cache_dtype", f"must be float16, bfloat16 or float32 (int8 codes: cache_codec), "
                                     f"got '{self.cache_dtype}'")
        if self.cache_codec is not None and self.cache_codec not in CODECS:
            raise bad("cache_codec", f"must be one of {', '.join(CODECS)} or null, got '{self.cache_codec}'")
        if self.cache_codec in DIM_CODECS and self.cache_codec_dim is None:
            raise bad("cache_codec", f"is {self.cache_codec}, which needs cache_codec_dim (values stored per token)")
        if self.cache_codec_dim is not None and self.cache_codec_dim < 1:
            raise bad("cache_codec_dim", f"must be at least 1, got {self.cache_codec_dim}")
        if self.cache_codec not in DIM_CODECS and self.cache_codec_dim is not None:
            raise bad("cache_codec_dim", f"applies to codecs {' and '.join(DIM_CODECS)} only "
                                         f"(cache_codec is {self.cache_codec or 'null'})")
        if not self.seeds:
            raise bad("seeds", "must list at least one seed")
        limits = self.max_examples.values() if isinstance(self.max_examples, dict) else [self.max_examples]
        if any(n is not None and n < 1 for n in limits):
            raise bad("max_examples", f"must be at least 1, got {self.max_examples}")
        if isinstance(self.max_examples, dict) and set(self.max_examples) - {"train", "dev", "test"}:
            raise bad("max_examples", f"takes the splits train, dev, test, got {sorted(self.max_examples)}")
        for key in ("max_length", "batch_size", "eval_batch_size", "grad_accum_steps", "max_epochs",
                    "patience", "adapter_size", "lora_rank", "cache_batch_size", "cut_layer"):
            if getattr(self, key) < 1:
                raise bad(key, f"must be at least 1, got {getattr(self, key)}")
        if not (math.isfinite(self.dev_fraction) and 0 < self.dev_fraction < 1):
            raise bad("dev_fraction", f"must be in (0, 1), got {self.dev_fraction}")
        for key in ("max_answer_length", "n_best"):
            if getattr(self, key) < 1:
                raise bad(key, f"must be at least 1, got {getattr(self, key)}")
        if "cross_model" in self.modes and self.source_model is None:
            raise bad("modes", "has cross_model, which needs source_model (the model whose cached states it reads)")
        if "cross_model" in self.modes and self.task in WINDOWED_TASKS:
            # Two tokenizers cut a long text into different windows: features would not pair up.
            raise bad("modes", f"has cross_model, which needs one feature per example; task {self.task} "
                               "splits long texts into windows")
        if self.task in WINDOWED_TASKS and not 0 <= self.window_stride < self.max_length // 2:
            raise bad("window_stride", f"must be in [0, max_length/2), got {self.window_stride}")


def check_device(device: str, where: str) -> None:
    """A device string torch understands and this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"{where} is not a device torch knows: '{device}' (e.g. cpu, cuda, cuda:0)") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"{where} asks for '{device}' but this machine has no usable CUDA device")
        if parsed.index is not None and parsed.index >= count:
            raise UserError(f"{where} asks for '{device}' but this machine has {count} CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{where} asks for 'mps' but it is not available here")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"{where} asks for '{device}'; supported: cpu, cuda[:N], mps")


def check_against_model(config: "ExperimentConfig", model, tokenizer) -> None:
    """Settings that depend on the loaded encoder: ``max_length`` within its positions."""
    limit = max_positions(model, tokenizer)
    if limit is not None and config.max_length > limit:
        raise UserError(f"key 'max_length' is {config.max_length}, but {config.model} takes at most {limit} "
                        "tokens per input; lower max_length")


def max_positions(model, tokenizer) -> int | None:
    """How many tokens one input of ``model`` may have (None: no fixed limit, e.g. T5's relative positions)."""
    limits = []
    # Tokenizers without a recorded limit report a huge sentinel (int(1e30)).
    if getattr(tokenizer, "model_max_length", None) and tokenizer.model_max_length < 1_000_000:
        limits.append(int(tokenizer.model_max_length))
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions and getattr(model.config, "position_embedding_type", "absolute") == "absolute":
        # RoBERTa-style models number positions from padding_idx + 1, so two slots are never used.
        offset = model.config.pad_token_id + 1 if model.config.model_type in ROBERTA_POSITIONS else 0
        limits.append(positions - offset)
    return min(limits) if limits else None


ROBERTA_POSITIONS = ("roberta", "xlm-roberta", "camembert", "data2vec-text", "xlm-roberta-xl", "esm")


def from_dict(values: dict, source: str) -> "ExperimentConfig":
    """A config from a plain mapping (a saved model's or a checkpoint's), checked like a file."""
    if not isinstance(values, dict):
        raise UserError(f"{source}: expected a mapping of settings")
    checked = {key: _checked(key, value, source) for key, value in values.items()}
    missing = [k for k, f in FIELDS.items() if k not in checked and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{source}: missing required key(s): {', '.join(missing)}")
    config = ExperimentConfig(**checked)
    config.validate({k: source for k in checked})
    return config


def split_limit(max_examples: int | dict[str, int] | None, split: str) -> int | None:
    """How many examples of ``split`` a ``max_examples`` setting keeps (None: all)."""
    return max_examples.get(split) if isinstance(max_examples, dict) else max_examples


FIELDS = {f.name: f for f in dataclasses.fields(ExperimentConfig)}
_HINTS = typing.get_type_hints(ExperimentConfig)


def _type_name(tp) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _check(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_check(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_check(v, item) for v in value)
    if origin is dict:
        k, v = typing.get_args(tp)
        return isinstance(value, dict) and all(_check(a, k) and _check(b, v) for a, b in value.items())
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _checked(key: str, value, source: str):
    if key not in FIELDS:
        close = difflib.get_close_matches(key, FIELDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UserError(f"{source}: unknown key '{key}'{hint}")
    tp = _HINTS[key]
    if not _check(value, tp):
        raise UserError(f"{source}: key '{key}' must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if key == "sweep":
        return value if value is None else _checked_sweep(value, source)
    if typing.get_origin(tp) is dict:
        return {k: float(v) for k, v in value.items()}
    if value is not None and (tp is float or float in typing.get_args(tp)):
        return float(value)
    return value


# Keys a sweep may vary: none of them changes the data or its tokenization, so one tokenized copy
# serves every point (a cut layer or cache dtype gets its own cache).
SWEEPABLE = ("learning_rate", "adapter_size", "lora_rank", "lora_alpha", "cut_layer", "pooling", "warmup_ratio",
             "warmup_steps", "max_grad_norm", "select_on", "max_epochs", "patience", "weight_decay", "head_dropout",
             "batch_size", "grad_accum_steps", "cache_dtype", "cache_codec", "cache_codec_dim", "length_group_batches")


def _checked_sweep(sweep: dict, source: str) -> dict[str, list]:
    """Each swept key is one the sweep may vary, with a non-empty list of values of the key's type;
    a learning rate may be one number for every mode."""
    checked = {}
    for key, values in sweep.items():
        where = f"{source}: key 'sweep.{key}'"
        if key not in SWEEPABLE:
            known = "a setting" if key in FIELDS else "not a setting"
            raise UserError(f"{where} cannot be swept ({known}; sweepable: {', '.join(SWEEPABLE)})")
        if not values or len(values) != len({repr(v) for v in values}):
            raise UserError(f"{where} must list distinct values, got {values!r}")
        if key == "learning_rate":
            checked[key] = [float(v) if _check(v, float) else _checked(key, v, f"{source} (sweep)") for v in values]
        else:
            checked[key] = [_checked(key, v, f"{source} (sweep)") for v in values]
    return checked


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load``, stricter where a config is concerned, and always failing with a YAMLError.

    A key given twice in one mapping (safe_load silently keeps the last), a value no constructor can
    build (``2001-13-45``, an integer of 5,000 digits: ValueError without a position from safe_load)
    and half a character from a ``"\\ud800"`` escape (which later fails in every path or file name)
    all become YAML errors marked with their line.
    """

    def construct_object(self, node, deep=False):
        try:
            value = super().construct_object(node, deep)
        except (ValueError, TypeError, OverflowError) as err:
            raise yaml.constructor.ConstructorError(None, None, f"cannot read this value ({str(err).split(':')[0]})",
                                                    node.start_mark) from None
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise yaml.constructor.ConstructorError(None, None, "a string with half a character "
                                                        "(a lone surrogate escape)", node.start_mark) from None
        return value

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may legitimately repeat keys
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
            except TypeError:  # unhashable: the base class reports it, with its position
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_problem(err: BaseException, text: str) -> tuple[int | None, str]:
    """``(1-based line or None, what is wrong)`` of a failed ``_StrictLoader`` load of ``text``."""
    if isinstance(err, RecursionError):
        return None, "nested too deeply"
    if isinstance(err, yaml.reader.ReaderError):  # a character YAML does not allow; only a position
        code = err.character if isinstance(err.character, int) else ord(err.character)
        return text.count("\n", 0, err.position) + 1, f"character {code:#x} is not allowed"
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or getattr(err, "context", None) or str(err).splitlines()[0]
    return (mark.line + 1 if mark is not None else None), str(problem).replace("\n", " ")


def _read_yaml(path: Path) -> dict:
    """The file's mapping; every problem (unreadable bytes, YAML syntax, values no constructor can
    build, keys that are not names) is a UserError naming the file and, where known, the line."""
    if not path.exists():
        raise UserError(f"config file not found: {path}")
    raw = read_bytes(path, "config file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 (byte {raw[err.start]:#04x})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except (yaml.YAMLError, RecursionError) as err:
        line, problem = _yaml_problem(err, text)
        where = f"{path}:{line}" if line is not None else f"{path}"
        raise UserError(f"{where}: invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of keys to values")
    for key in data:
        if not isinstance(key, str):
            raise UserError(f"{path}: key {key!r} is not a setting name")
    return data


def _layer(path: Path, seen: tuple = ()) -> dict[str, tuple]:
    """Resolved ``{key: (value, source file)}`` of ``path`` and the chain of files it extends."""
    path = path.resolve()
    if path in seen:
        raise UserError(f"{path}: 'base' chain loops back to itself")
    data = _read_yaml(path)
    resolved = {}
    if "base" in data:
        base = data.pop("base")
        if not isinstance(base, str):
            raise UserError(f"{path}: key 'base' must be a file name")
        resolved = _layer(path.parent / base, seen + (path,))
    for key, value in data.items():
        value = _checked(key, value, str(path))
        if isinstance(value, dict) and key in resolved:
            value = {**resolved[key][0], **value}
        resolved[key] = (value, str(path))
    return resolved


def parse_override(text: str) -> tuple[str, object]:
    """``--set key=value``: the key and the value as YAML reads it; errors are one line (repr keeps a
    newline or an undecodable byte of the command line from breaking it)."""
    if "=" not in text:
        raise UserError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        return key, yaml.load(raw, Loader=_StrictLoader)
    except (yaml.YAMLError, RecursionError) as err:
        name = key if key.isidentifier() else repr(key)
        raise UserError(f"--set {name}: cannot parse value {raw!r} ({_yaml_problem(err, raw)[1]})") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> tuple[ExperimentConfig, dict[str, str]]:
    """Return the config and, for each key, the file (or ``--set``) its value came from."""
    resolved = _layer(Path(path))
    for text in overrides:
        key, value = parse_override(text)
        value = _checked(key, value, "--set")
        if isinstance(value, dict) and key in resolved:
            value = {**resolved[key][0], **value}
        resolved[key] = (value, "--set")
    missing = [k for k, f in FIELDS.items()
               if k not in resolved and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{path}: missing required key(s): {', '.join(missing)}")
    config = ExperimentConfig(**{k: v for k, (v, _) in resolved.items()})
    sources = {k: src for k, (_, src) in resolved.items()}
    config.validate(sources)
    return config, sources


def recorded_defaults() -> dict:
    """What a key missing from an older result file's config means: the field's default, or
    ``LEGACY_DEFAULTS`` where the default changed since."""
    return {k: f.default for k, f in FIELDS.items() if f.default is not dataclasses.MISSING} | LEGACY_DEFAULTS
