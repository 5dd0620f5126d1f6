import copy
import logging

import pytest
import torch

from recycling import encoders, models
from recycling.heads import SequenceClassificationHead
from tests.tiny_models import random_batch, tiny_model


def classifier(mode, base, cut, num_labels, adapter_size, dropout, seed, pooling="cls"):
    def head():
        return SequenceClassificationHead(encoders.hidden_size(base), num_labels, dropout, pooling)
    return models.build_model(mode, base, cut, head, models.UpperSettings(adapter_size=adapter_size), seed)

ARCHS = ["bert", "roberta", "distilbert", "electra", "mpnet", "deberta-v2", "t5"]


@pytest.mark.parametrize("mode", ["semi_frozen", "adapters"])
@pytest.mark.parametrize("model_type", ARCHS)
def test_nothing_below_the_cut_is_trainable_in_cached_modes(mode, model_type):
    base = tiny_model(model_type)
    cut = 2
    model = classifier(mode, base, cut, 3, 8, 0.1, seed=0)
    upper_layers = list(encoders.layers(model.encoder))
    assert len(upper_layers) == encoders.num_layers(base) - cut
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "something must train"
    # Besides the upper layers, only tables of relative positions shared by all layers may train
    # (MPNet, DeBERTa-v2): the upper part owns its copy, and the cache was built with the original.
    # T5's final layer norm sits on top of the last layer.
    shared = ("relative_attention_bias", "rel_embeddings", "encoder.encoder.LayerNorm", "final_layer_norm")
    for name in trainable:
        assert name.startswith("head.") or ".layer." in name or ".block." in name or any(
            s in name for s in shared), name
    assert not any(n.startswith("encoder.embeddings.") or "embed_tokens" in n for n in trainable)
    if mode == "adapters":
        assert all(n.startswith("head.") or "adapter" in n for n in trainable)
    # the upper part holds exactly the upper layers' weights (plus T5's copied position bias)
    base_upper = sum(p.numel() for layer in list(encoders.layers(base))[cut:] for p in layer.parameters())
    model_upper = sum(p.numel() for layer in upper_layers for p in layer.parameters()
                      if not any(p is q for q in _adapter_params(layer)))
    extra = 0
    if model_type == "t5":
        extra = base.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.numel()
    assert model_upper == base_upper + extra


def _adapter_params(layer):
    return [p for n, p in layer.named_parameters() if "adapter" in n]


def test_full_mode_trains_every_layer():
    base = tiny_model("bert")
    model = classifier("full", base, 2, 3, 8, 0.1, seed=0)
    assert all(p.requires_grad for p in model.parameters())
    assert encoders.num_layers(model.encoder) == 4


@pytest.mark.parametrize("model_type", ARCHS)
def test_cached_adapters_match_adapters_on_the_whole_model(model_type):
    base = tiny_model(model_type)
    ids, mask = random_batch()
    full = classifier("adapters_full", base, 2, 3, 8, 0.0, seed=1).eval()
    cached = classifier("adapters", base, 2, 3, 8, 0.0, seed=1).eval()
    for model in (full, cached):  # non-trivial adapters, identical in both models
        torch.manual_seed(7)
        with torch.no_grad():
            for p in models.trainable_parameters(model):
                p.normal_(std=0.2)
    lower = encoders.lower_part(base, 2)
    with torch.no_grad():
        a = full({"input_ids": ids, "attention_mask": mask})
        b = cached({"hidden": encoders.run_lower(lower, ids, mask), "attention_mask": mask})
    assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.parametrize("model_type", ARCHS)
def test_adapters_are_a_residual_branch_only_in_upper_layers(model_type):
    base = tiny_model(model_type)
    ids, mask = random_batch()
    model = classifier("adapters_full", base, 2, 3, 8, 0.0, seed=1).eval()
    names = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    container = ".block." if model_type == "t5" else ".layer."
    layer_ids = {int(n.split(container)[1].split(".")[0]) for n in names}
    assert layer_ids == {2, 3}
    assert len(names) == 2 * 2 * 4  # 2 upper layers x 2 adapters x (down w, b, up w, b)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "adapter_up" in n:
                p.zero_()
        out = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        ref = base(input_ids=ids, attention_mask=mask).last_hidden_state
        keep = mask.bool()
        assert (out[keep] - ref[keep]).abs().max().item() <= 1e-5
        for n, p in model.named_parameters():
            if "adapter_up" in n:
                p.normal_(std=0.5)
        changed = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        assert (changed[keep] - ref[keep]).abs().max().item() > 1e-3


def test_adapter_size_sets_the_bottleneck_width():
    model = classifier("adapters", tiny_model("bert"), 2, 3, 8, 0.1, seed=0)
    downs = [p for n, p in model.named_parameters() if "adapter_down" in n and n.endswith("weight")]
    assert downs and all(p.shape == (8, 32) for p in downs)


def test_same_seed_same_head():
    base = tiny_model("bert")
    a = classifier("semi_frozen", base, 2, 3, 8, 0.1, seed=3)
    b = classifier("semi_frozen", base, 2, 3, 8, 0.1, seed=3)
    c = classifier("semi_frozen", base, 2, 3, 8, 0.1, seed=4)
    assert torch.equal(a.head.out.weight, b.head.out.weight)
    assert not torch.equal(a.head.out.weight, c.head.out.weight)


def test_a_training_step_from_the_cache_equals_one_on_recomputed_frozen_lower_layers():
    from transformers import BertConfig, BertModel

    from tests.tiny_models import SMALL

    torch.manual_seed(0)
    base = BertModel(BertConfig(**SMALL, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()
    ids, mask = random_batch()
    labels = torch.tensor([0, 2, 1])
    cached = classifier("semi_frozen", base, 2, 3, 8, 0.0, seed=1)
    text = classifier("full", base, 2, 3, 8, 0.0, seed=1)
    for module in [text.encoder.embeddings, *list(encoders.layers(text.encoder))[:2]]:
        module.requires_grad_(False)
    hidden = encoders.run_lower(encoders.lower_part(base, 2), ids, mask)
    for model, batch in ((cached, {"hidden": hidden}), (text, {"input_ids": ids})):
        optimizer = torch.optim.AdamW(models.trainable_parameters(model), lr=1e-2)
        for _ in range(3):
            full_batch = {**batch, "attention_mask": mask, "labels": labels}
            total, count = model.loss(model(full_batch), full_batch)
            (total / count).backward()
            optimizer.step()
            optimizer.zero_grad()
    after_cached = list(encoders.layers(cached.encoder))
    after_text = list(encoders.layers(text.encoder))[2:]
    for a, b in zip(after_cached, after_text):
        for p, q in zip(a.parameters(), b.parameters()):
            assert (p - q).abs().max().item() <= 1e-5
    assert torch.allclose(cached.head.out.weight, text.head.out.weight, atol=1e-5)
    assert not torch.equal(after_cached[0].output.dense.weight, list(encoders.layers(base))[2].output.dense.weight)


def test_adding_adapters_logs_no_false_inactive_warning(caplog):
    with caplog.at_level(logging.WARNING):
        model = classifier("adapters", tiny_model("bert"), 2, 3, 8, 0.1, seed=0)
    assert "none are activated" not in caplog.text
    assert str(model.encoder.active_adapters) == "Stack[recycling]"


@pytest.mark.parametrize("model_type", ARCHS)
def test_adapters_full_trains_exactly_like_cached_adapters_with_dropout_on(model_type):
    """In train mode (dropout active) the text baseline must differ from the cached mode only in
    where layer k's input comes from: frozen lower layers run in eval mode, and T5's stack does not
    drop its (cached or frozen) input."""
    base = tiny_model(model_type)
    full = classifier("adapters_full", base, 2, 3, 8, 0.1, seed=1)
    _assert_same_training_forward(base, full, classifier("adapters", base, 2, 3, 8, 0.1, seed=1))


def _assert_same_training_forward(base, full, cached):
    """In train mode, the text baseline and the cached model compute the same outputs from the same
    dropout stream; another stream gives others (dropout is on)."""
    full.train(), cached.train()
    ids, mask = random_batch()
    hidden = encoders.run_lower(encoders.lower_part(base, 2), ids, mask)
    torch.manual_seed(11)
    a = full({"input_ids": ids, "attention_mask": mask})
    torch.manual_seed(11)
    b = cached({"hidden": hidden, "attention_mask": mask})
    assert (a - b).abs().max().item() <= 1e-5
    torch.manual_seed(12)
    assert (a - cached({"hidden": hidden, "attention_mask": mask})).abs().max().item() > 1e-4
    assert all(not m.training for m in full.frozen) and full.encoder.training


def test_t5_upper_part_keeps_its_output_dropout_but_not_its_input_dropout():
    base = tiny_model("t5")
    upper = encoders.upper_part(copy.deepcopy(base), 2).train()
    calls = []
    upper.encoder.dropout.register_forward_hook(lambda m, args, out: calls.append(torch.equal(args[0], out)))
    hidden = torch.randn(2, 5, 32)
    upper(inputs_embeds=hidden, attention_mask=torch.ones(2, 5, dtype=torch.long))
    assert calls == [True, False]  # input passed through, output dropped
    twin = copy.deepcopy(upper)  # the stack's pre-hook must arm the copy's own dropout module
    calls.clear()  # (the recording hook is copied along and still appends here)
    twin(inputs_embeds=hidden, attention_mask=torch.ones(2, 5, dtype=torch.long))
    assert calls == [True, False]


@pytest.mark.slow  # inductor compiles C++ kernels: about a minute on 2 cores
def test_compiled_model_computes_the_same_loss_and_keeps_its_parameter_names():
    base = tiny_model("bert")
    ids, mask = random_batch()
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 0])}

    def make():
        return models.build_model("full", base, 2, lambda: SequenceClassificationHead(32, 2, 0.0),
                                   models.UpperSettings(adapter_size=8), seed=0).eval()

    eager, compiled = make(), make()
    names = list(compiled.state_dict())
    compiled.compile(dynamic=True)
    assert list(compiled.state_dict()) == names  # saved models and best-epoch restores are unchanged
    with torch.no_grad():
        expected = eager.loss(eager(batch), batch)[0]
        got = compiled.loss(compiled(batch), batch)[0]
    assert torch.allclose(got, expected, atol=1e-5)


# Families added after the tests above were written, checked with perturbed layer norms.
NEW_ADAPTER_ARCHS = ["xlm-roberta", "deberta", "modernbert", "mt5"]
NO_ADAPTER_ARCHS = ["camembert", "data2vec-text", "roformer", "ernie", "xlm-roberta-xl", "esm", "megatron-bert"]


def _layer_index(name):
    """The index in the layer list of a parameter name (BERT-like, T5 and ModernBERT layouts)."""
    for container in (".block.", ".layers.", ".layer."):  # T5 blocks hold a ".layer." list too
        if container in name:
            return int(name.split(container)[1].split(".")[0])
    raise AssertionError(name)


@pytest.mark.parametrize("model_type", NEW_ADAPTER_ARCHS)
def test_new_families_cached_adapters_match_adapters_on_the_whole_model(model_type):
    from tests.tiny_models import perturb_norms

    base = perturb_norms(tiny_model(model_type))
    ids, mask = random_batch()
    full = classifier("adapters_full", base, 2, 3, 8, 0.0, seed=1).eval()
    cached = classifier("adapters", base, 2, 3, 8, 0.0, seed=1).eval()
    for model in (full, cached):
        torch.manual_seed(7)
        with torch.no_grad():
            for p in models.trainable_parameters(model):
                p.normal_(std=0.2)
    names = [n for n, p in full.named_parameters() if p.requires_grad and not n.startswith("head.")]
    assert {_layer_index(n) for n in names} == {2, 3} and len(names) == 2 * 2 * 4
    lower = encoders.lower_part(base, 2)
    with torch.no_grad():
        a = full({"input_ids": ids, "attention_mask": mask})
        b = cached({"hidden": encoders.run_lower(lower, ids, mask), "attention_mask": mask})
        # with every adapter's output zeroed, the adapted encoder is the pretrained one
        for n, p in full.named_parameters():
            if "adapter_up" in n:
                p.zero_()
        out = full.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        ref = base(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask.bool()
    assert (a - b).abs().max().item() <= 1e-5
    assert (out[keep] - ref[keep]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("model_type", NEW_ADAPTER_ARCHS)
def test_new_families_adapters_full_trains_exactly_like_cached_adapters(model_type):
    test_adapters_full_trains_exactly_like_cached_adapters_with_dropout_on(model_type)


@pytest.mark.parametrize("mode", ["adapters", "adapters_full"])
@pytest.mark.parametrize("model_type", NO_ADAPTER_ARCHS)
def test_adapter_modes_refuse_a_family_the_adapters_library_lacks(model_type, mode):
    from recycling.errors import UserError

    with pytest.raises(UserError, match=f"adapter modes do not support architecture '{model_type}'") as err:
        classifier(mode, tiny_model(model_type), 2, 3, 8, 0.1, seed=0)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("model_type", NEW_ADAPTER_ARCHS + NO_ADAPTER_ARCHS)
def test_new_families_semi_frozen_trains_only_above_the_cut(model_type):
    base = tiny_model(model_type)
    model = classifier("semi_frozen", base, 2, 3, 8, 0.1, seed=0)
    arch = encoders.architecture(base)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("encoder.embeddings") or "embed_tokens" in n for n in trainable)
    allowed = ["relative_attention_bias", "rel_embeddings", ".layer.", ".block.", ".layers."]
    if arch.final_norm:  # the final norm sits on top of the last layer
        allowed.append(f"encoder.{arch.final_norm}.")
    for name in trainable:  # besides the upper layers, only tables of relative positions shared by all layers
        assert name.startswith("head.") or any(part in name for part in allowed), name
    assert len(encoders.layers(model.encoder)) == 2


# LoRA (peft) above the cut: every family the encoders support, including those peft's own table lacks.
LORA_ARCHS = ["bert", "distilbert", "mpnet", "deberta", "deberta-v2", "modernbert", "t5", "roformer"]


def _lora(mode, base, rank=4, alpha=8.0, dropout=0.0, seed=1):
    def head():
        return SequenceClassificationHead(encoders.hidden_size(base), 3, dropout, "cls")
    return models.build_model(mode, base, 2, head, models.UpperSettings(lora_rank=rank, lora_alpha=alpha), seed)


@pytest.mark.parametrize("model_type", LORA_ARCHS)
def test_lora_trains_only_its_updates_of_the_upper_layers_and_the_head(model_type):
    base = tiny_model(model_type)
    model = _lora("lora_full", base)
    names = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    assert {_layer_index(n) for n in names} == {2, 3}
    assert all(".lora_A." in n or ".lora_B." in n for n in names)
    fused = model_type in ("deberta", "modernbert")  # one projection computes query, key and value
    assert len(names) == 2 * (1 if fused else 2) * 2  # 2 upper layers x targets x (A, B)
    assert all(p.shape[0] == 4 for n, p in model.named_parameters() if ".lora_A." in n)  # the rank
    cached = _lora("lora", base)
    assert len(encoders.layers(cached.encoder)) == 2
    assert sorted(n for n, p in cached.named_parameters() if p.requires_grad and not n.startswith("head.")) == \
        sorted(n.replace(f".{_layer_index(n)}.", f".{_layer_index(n) - 2}.", 1) for n in names)


@pytest.mark.parametrize("model_type", LORA_ARCHS)
def test_cached_lora_matches_lora_on_the_whole_model_and_starts_as_the_pretrained_encoder(model_type):
    from tests.tiny_models import perturb_norms

    base = perturb_norms(tiny_model(model_type)) if model_type in NEW_ADAPTER_ARCHS else tiny_model(model_type)
    ids, mask = random_batch()
    full, cached = _lora("lora_full", base).eval(), _lora("lora", base).eval()
    keep = mask.bool()
    with torch.no_grad():
        out = full.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        ref = base(input_ids=ids, attention_mask=mask).last_hidden_state
        assert (out[keep] - ref[keep]).abs().max().item() <= 1e-5  # B = 0 at the start
        for model in (full, cached):  # non-trivial updates, identical in both models
            torch.manual_seed(7)
            for p in models.trainable_parameters(model):
                p.normal_(std=0.2)
        a = full({"input_ids": ids, "attention_mask": mask})
        b = cached({"hidden": encoders.run_lower(encoders.lower_part(base, 2), ids, mask), "attention_mask": mask})
        changed = full.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (a - b).abs().max().item() <= 1e-5
    assert (changed[keep] - ref[keep]).abs().max().item() > 1e-3


def test_lora_alpha_scales_the_update():
    base = tiny_model("bert")
    ids, mask = random_batch()
    outs = []
    for alpha in (4.0, 8.0):
        model = _lora("lora_full", base, rank=4, alpha=alpha).eval()
        torch.manual_seed(7)
        with torch.no_grad():
            for p in models.trainable_parameters(model):
                p.normal_(std=0.2)
            layer = encoders.layers(model.encoder)[3].attention.self.query
            x = torch.randn(2, 32)
            outs.append(layer(x) - layer.base_layer(x))
    assert torch.allclose(outs[1], 2 * outs[0], atol=1e-5)  # (alpha / r) B A x


@pytest.mark.parametrize("model_type", ["bert", "t5"])
def test_lora_full_trains_exactly_like_cached_lora_with_dropout_on(model_type):
    base = tiny_model(model_type)
    _assert_same_training_forward(base, _lora("lora_full", base, dropout=0.1), _lora("lora", base, dropout=0.1))
