"""Every setting is checked before anything is built or trained: one line naming the key and its source."""

import pytest

from recycling.config import check_against_model, from_dict, load_config, max_positions
from recycling.errors import UserError
from tests import faults

BASE = ("dataset: d\nmodel: m\ncut_layer: 2\n"
        "learning_rate: {full: 1.0e-5, semi_frozen: 2.0e-5, adapters: 1.0e-4, adapters_full: 1.0e-4}\n")

BAD_SETTINGS = [
    # (override, key named in the error, what the fault table calls it)
    ("learning_rate={full: 0}", "learning_rate", "a learning rate of 0"),
    ("learning_rate={semi_frozen: -1.0e-5}", "learning_rate", "a negative learning rate"),
    ("learning_rate={full: .nan}", "learning_rate", "a learning rate that is NaN"),
    ("head_dropout=1.0", "head_dropout", "dropout 1.0"),
    ("head_dropout=-0.1", "head_dropout", "negative dropout"),
    ("seeds=[0, 0]", "seeds", "a repeated seed"),
    ("seeds=[-1]", "seeds", "a negative seed"),
    ("seeds=[]", "seeds", "no seeds"),
    ("modes=[]", "modes", "no modes"),
    ("modes=[full, full]", "modes", "a repeated mode"),
    ("max_examples=0", "max_examples", "max_examples 0"),
    ("max_examples={train: 0}", "max_examples", "max_examples 0 for one split"),
    ("max_length=0", "max_length", "max_length 0"),
    ("weight_decay=-0.01", "weight_decay", "negative weight decay"),
    ("lora_rank=0", "lora_rank", "LoRA rank 0"),
    ("lora_alpha=-8", "lora_alpha", "a negative LoRA alpha"),
    ("warmup_steps=-5", "warmup_steps", "negative warm-up steps"),
    ("warmup_ratio=1.5", "warmup_ratio", "warm-up ratio 1.5"),
    ("max_grad_norm=0", "max_grad_norm", "a gradient-norm bound of 0"),
    ("device=gpu7", "device", "a device torch does not know"),
    ("device=cuda:3", "device", "a CUDA device on a machine without one"),
    ("dataset=../../etc", "dataset", "a dataset name that is a path"),
    ("dataset=..", "dataset", "the dataset name '..'"),
    ("qa_train_file=../secret.json", "qa_train_file", "a QA file name that is a path"),
    ("qa_dev_file=train-v1.1.json", "qa_dev_file", "the QA training file as the dev file"),
    ("qa_test_file=train-v1.1.json", "qa_test_file", "the QA training file as the test file"),
    ("task=translation", "task", "an unknown task"),
    ("metric=accuracy", "metric", "a metric the task does not report"),
    ("cache_dtype=int8", "cache_dtype", "an unknown cache dtype"),
    ("cache_codec=zip", "cache_codec", "an unknown cache codec"),
    ("cache_codec=pca", "cache_codec", "a PCA codec without its size"),
    ("cache_codec_dim=0", "cache_codec_dim", "a codec size of 0"),
    ("cache_codec_dim=8", "cache_codec_dim", "a codec size without a codec that takes one"),
    ("precision=fp16", "precision", "an unknown precision"),
    ("batch_size=true", "batch_size", "a boolean batch size"),
]


@pytest.mark.parametrize("override,key,fault", BAD_SETTINGS, ids=[b[2] for b in BAD_SETTINGS])
def test_bad_setting_is_one_line_naming_the_key(tmp_path, override, key, fault):
    path = tmp_path / "exp.yaml"
    path.write_text(BASE)
    with pytest.raises(UserError) as err:
        load_config(path, [override])
    message = str(err.value)
    assert f"'{key}'" in message and "--set" in message and "\n" not in message
    faults.record("config", f"{fault} (`--set {override}`)", message, tmp_path)


def test_bad_setting_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(BASE + "head_dropout: 2\n")
    with pytest.raises(UserError, match="head_dropout") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_valid_settings_pass(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(BASE)
    config, _ = load_config(path, ["seeds=[0, 1, 2]", "device=cpu", "head_dropout=0"])
    assert config.seeds == [0, 1, 2]


def test_saved_config_is_checked_like_a_file():
    with pytest.raises(UserError, match="model.json: unknown key 'no_such_key'"):
        from_dict({"dataset": "d", "model": "m", "cut_layer": 2, "no_such_key": 1}, "model.json")
    with pytest.raises(UserError, match="missing required key"):
        from_dict({"dataset": "d"}, "model.json")
    assert from_dict({"dataset": "d", "model": "m", "cut_layer": 2}, "model.json").cut_layer == 2


class _Config:
    def __init__(self, model_type, positions, pad=1, embedding="absolute"):
        self.model_type, self.max_position_embeddings, self.pad_token_id = model_type, positions, pad
        self.position_embedding_type = embedding


class _Model:
    def __init__(self, config):
        self.config = config


class _Tokenizer:
    def __init__(self, limit):
        self.model_max_length = limit


def test_max_positions_of_known_layouts():
    assert max_positions(_Model(_Config("bert", 512)), _Tokenizer(int(1e30))) == 512
    assert max_positions(_Model(_Config("roberta", 514)), _Tokenizer(int(1e30))) == 512
    assert max_positions(_Model(_Config("bert", 512)), _Tokenizer(256)) == 256
    assert max_positions(_Model(_Config("deberta-v2", 512, embedding="relative_key")), _Tokenizer(int(1e30))) is None


def test_max_length_beyond_the_model_is_refused(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(BASE)
    config, _ = load_config(path, ["max_length=600"])
    with pytest.raises(UserError, match="'max_length' is 600.*at most 512") as err:
        check_against_model(config, _Model(_Config("bert", 512)), _Tokenizer(int(1e30)))
    faults.record("config", "max_length 600 for a model with 512 positions", str(err.value), tmp_path)
