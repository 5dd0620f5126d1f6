"""Tiny random encoders of every supported architecture, built offline from configs."""

import torch
from transformers import (
    BertConfig,
    BertModel,
    DebertaV2Config,
    DebertaV2Model,
    DistilBertConfig,
    DistilBertModel,
    ElectraConfig,
    ElectraModel,
    MPNetConfig,
    MPNetModel,
    RobertaConfig,
    RobertaModel,
    T5Config,
    T5EncoderModel,
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
}


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
