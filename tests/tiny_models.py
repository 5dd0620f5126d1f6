"""Tiny random encoders of every supported architecture, built offline from configs."""

import torch
from transformers import (
    BertConfig,
    BertModel,
    CamembertConfig,
    CamembertModel,
    Data2VecTextConfig,
    Data2VecTextModel,
    DebertaConfig,
    DebertaModel,
    DebertaV2Config,
    DebertaV2Model,
    DistilBertConfig,
    DistilBertModel,
    ElectraConfig,
    ElectraModel,
    ErnieConfig,
    ErnieModel,
    EsmConfig,
    EsmModel,
    MegatronBertConfig,
    MegatronBertModel,
    ModernBertConfig,
    ModernBertModel,
    MPNetConfig,
    MPNetModel,
    MT5Config,
    MT5EncoderModel,
    RobertaConfig,
    RobertaModel,
    RoFormerConfig,
    RoFormerModel,
    T5Config,
    T5EncoderModel,
    XLMRobertaConfig,
    XLMRobertaModel,
    XLMRobertaXLConfig,
    XLMRobertaXLModel,
)

VOCAB = 99
SMALL = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
             intermediate_size=37, max_position_embeddings=64)

CONFIGS = {
    "bert": (BertModel, lambda: BertConfig(**SMALL)),
    "roberta": (RobertaModel, lambda: RobertaConfig(**SMALL, pad_token_id=1)),
    "electra": (ElectraModel, lambda: ElectraConfig(**SMALL, embedding_size=16)),
    "distilbert": (DistilBertModel, lambda: DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=4, n_heads=4, hidden_dim=37, max_position_embeddings=64)),
    "mpnet": (MPNetModel, lambda: MPNetConfig(**SMALL)),
    "deberta-v2": (DebertaV2Model, lambda: DebertaV2Config(
        **SMALL, relative_attention=True, position_buckets=8, pos_att_type=["p2c", "c2p"],
        conv_kernel_size=3, position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True)),
    "t5": (T5EncoderModel, lambda: T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=37, num_layers=4, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu")),
    "xlm-roberta": (XLMRobertaModel, lambda: XLMRobertaConfig(**SMALL, pad_token_id=1)),
    "camembert": (CamembertModel, lambda: CamembertConfig(**SMALL, pad_token_id=1)),
    "data2vec-text": (Data2VecTextModel, lambda: Data2VecTextConfig(**SMALL, pad_token_id=1)),
    "deberta": (DebertaModel, lambda: DebertaConfig(
        **SMALL, relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=16,
        position_biased_input=False)),
    # embedding_size != hidden_size: the embedding projection must stay below the cut
    "roformer": (RoFormerModel, lambda: RoFormerConfig(**SMALL, embedding_size=16)),
    "ernie": (ErnieModel, lambda: ErnieConfig(**SMALL, use_task_id=True, task_type_vocab_size=3)),
    # global attention every 2nd layer, a local window shorter than random_batch's rows
    "modernbert": (ModernBertModel, lambda: ModernBertConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=4, num_attention_heads=4,
        max_position_embeddings=64, global_attn_every_n_layers=2, local_attention=4, pad_token_id=0,
        bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3, norm_bias=True,
        attn_implementation="sdpa")),
    "xlm-roberta-xl": (XLMRobertaXLModel, lambda: XLMRobertaXLConfig(**SMALL, pad_token_id=1)),
    # rotary positions in every layer, token dropout on the mask token (id 6 occurs in random_batch)
    "esm": (EsmModel, lambda: EsmConfig(
        **SMALL, pad_token_id=1, mask_token_id=6, position_embedding_type="rotary", token_dropout=True,
        emb_layer_norm_before=True)),
    "megatron-bert": (MegatronBertModel, lambda: MegatronBertConfig(**SMALL)),
    "mt5": (MT5EncoderModel, lambda: MT5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=37, num_layers=4, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu")),
}

NORM_CLASSES = ("LayerNorm", "RMSNorm")


def perturb_norms(model, seed: int = 1):
    """Give every LayerNorm/RMSNorm a random scale and shift, in place: with unit weights and zero
    biases a norm applied twice, or in the wrong part of a split model, would go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if not type(module).__name__.endswith(NORM_CLASSES):
                continue
            weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
            if isinstance(weight, torch.Tensor):
                weight.copy_(1 + 0.5 * torch.randn(weight.shape, generator=g))
            if isinstance(bias, torch.Tensor):
                bias.copy_(0.1 * torch.randn(bias.shape, generator=g))
    return model


def tiny_model(model_type: str, seed: int = 0):
    torch.manual_seed(seed)
    cls, make_config = CONFIGS[model_type]
    model = cls(make_config())
    model.eval()
    return model


def random_batch(batch=3, length=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (batch, length), generator=g)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[1, 7:] = 0  # ragged rows, as padding per batch produces
    attention_mask[2, 4:] = 0
    input_ids[attention_mask == 0] = 0
    return input_ids, attention_mask
