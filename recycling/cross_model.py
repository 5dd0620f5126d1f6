"""Cross-model recycling: one model's cached final states feed another model.

The source model (``source_model``) runs once over the corpus and its final-layer states are
cached like any cache (``cache_builder``, cut at its last layer). A consumer model (``model``) is
then fine-tuned whole from text, with each token's input embedding plus a learned projection
(:class:`Bridge`) of the source states of the same characters.

The two models may tokenize differently. Tokens are paired through the text they cover: each
token's characters (lower-cased, accents and word-piece markers removed) are laid end to end on
both sides, and a consumer token takes the mean of the source tokens sharing any of its
characters. A consumer token whose characters the source never saw (cut off by a shorter
``max_length``, or written differently) gets no source state; its first and last special tokens
take the source's first and last (both sides' sentence markers).
"""

from __future__ import annotations

import difflib
import logging
import unicodedata

import numpy as np
import torch
from torch import nn

from cache_builder import task_cache
from recycling import encoders
from recycling.errors import UserError
from recycling.tasks import Features

logger = logging.getLogger(__name__)


class Bridge(nn.Module):
    """Source state -> consumer embedding: a two-layer MLP whose output layer starts at zero, so the
    consumer starts as the pretrained model and learns how much of the source to take in."""

    def __init__(self, source_size: int, hidden_size: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(source_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(source) * mask.unsqueeze(-1).to(source.dtype)


class TokenText:
    """The normalized characters of each token id of one tokenizer (looked up once per id)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.special = set(tokenizer.all_special_ids)
        self.memo: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        if token_id not in self.memo:
            if token_id in self.special:
                text = ""
            else:
                text = self.tokenizer.convert_tokens_to_string([self.tokenizer.convert_ids_to_tokens(token_id)])
                text = text.strip().removeprefix("##")
                text = "".join(c for c in unicodedata.normalize("NFKD", text.lower())
                               if not unicodedata.combining(c) and not c.isspace())
            self.memo[token_id] = text
        return self.memo[token_id]


def align(consumer: list[str], source: list[str], consumer_special: list[bool],
          source_special: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """For each consumer token, the source tokens ``[start, end)`` covering its characters.

    ``consumer`` and ``source`` are the tokens' normalized texts; ``*_special`` flags special
    tokens. ``start == end`` means the token has no source state.
    """
    stream_c, stream_s = "".join(consumer), "".join(source)
    owner = np.repeat(np.arange(len(source)), [len(t) for t in source])  # source token of each character
    where = np.full(len(stream_c), -1)  # each consumer character's place in the source stream
    common = min(len(stream_c), len(stream_s))
    if stream_c[:common] == stream_s[:common]:  # the usual case: same text, one side maybe cut shorter
        where[:common] = np.arange(common)
    else:
        matcher = difflib.SequenceMatcher(None, stream_c, stream_s, autojunk=False)
        for a, b, size in matcher.get_matching_blocks():
            where[a:a + size] = np.arange(b, b + size)
    starts, ends = np.zeros(len(consumer), np.int64), np.zeros(len(consumer), np.int64)
    position = 0
    for t, text in enumerate(consumer):
        placed = where[position:position + len(text)]
        position += len(text)
        placed = placed[placed >= 0]
        if len(placed):
            starts[t], ends[t] = owner[placed.min()], owner[placed.max()] + 1
    if consumer and source:
        for t, s in ((0, 0), (len(consumer) - 1, len(source) - 1)):
            if consumer_special[t] and source_special[s]:
                starts[t], ends[t] = s, s + 1
    return starts, ends


def align_features(consumer: Features, source: Features, consumer_tokenizer, source_tokenizer):
    """:func:`align` for every feature of one split (both tokenizations of the same examples)."""
    if len(consumer) != len(source):
        raise ValueError(f"{len(consumer)} consumer features, {len(source)} source features")
    text_c, text_s = TokenText(consumer_tokenizer), TokenText(source_tokenizer)
    out = []
    for ids_c, ids_s in zip(consumer.input_ids, source.input_ids):
        out.append(align([text_c(i) for i in ids_c], [text_s(i) for i in ids_s],
                         [i in text_c.special for i in ids_c], [i in text_s.special for i in ids_s]))
    return out


class AlignedSource:
    """One split's source states in the consumer's tokens: feature i is ``[len_i, source_width]``
    float32, the mean of each token's aligned source rows (zeros where it has none), and its mask.

    Rows are averaged as stored: a compressed source cache's codes are decoded after averaging,
    which is the same for the codecs' linear decoders.
    """

    def __init__(self, cached, alignment: list[tuple[np.ndarray, np.ndarray]], size: int):
        self.cached = cached  # a cache_builder CachedSplit of the source
        self.alignment = alignment
        self.codec = cached.codec
        self.size = size  # the source's hidden size (a compressed cache stores fewer values)

    def __len__(self) -> int:
        return len(self.alignment)

    def rows(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        starts, ends = self.alignment[i]
        rows = self.cached.as_torch(np.array(self.cached.rows(i))).float()
        sums = torch.cat([rows.new_zeros(1, rows.shape[1]), rows.cumsum(0)])
        count = torch.from_numpy(ends - starts)
        mean = (sums[ends] - sums[starts]) / count.clamp(min=1).unsqueeze(1)
        return mean.numpy(), (count > 0).numpy()


def source_splits(config, task, data, features: dict[str, Features], consumer_tokenizer, *, cache_root,
                  device, dataset: str | None = None, cache_dir=None, verify: bool = False, codec_given=None,
                  trained_on: str | None = None):
    """The source model's cached final states of every split of ``features``, aligned to the
    consumer's tokens: ``({split: AlignedSource}, cache)``. The cache is built or reused (with a
    saved model's codec, ``codec_given``, when one is given). ``trained_on``: the SHA-256 of the
    source weights a saved model was trained with; a source that differs is refused before any cache."""
    source, source_tokenizer = encoders.load_encoder(config.source_model, config.trust_remote_code)
    layers = encoders.num_layers(source)
    if trained_on is not None:
        found = encoders.fingerprint_weights(encoders.lower_part(source, layers))
        if found != trained_on:
            raise UserError(f"this model was trained on the states of another {config.source_model} (sha256 "
                            f"{trained_on[:12]}) than the one found here ({found[:12]}); refusing to predict")
    source_features = {split: task.features(data, split, source_tokenizer, config) for split in features}
    cache = task_cache(source_features, task=config.task, dataset=dataset or config.dataset,
                       model_name=config.source_model, model=source, cut_layer=layers,
                       pad_id=source_tokenizer.pad_token_id or 0, dtype=config.cache_dtype,
                       batch_size=config.cache_batch_size, cache_root=cache_root, cache_dir=cache_dir, device=device,
                       codec=config.cache_codec, codec_dim=config.cache_codec_dim, codec_given=codec_given)
    if verify:
        cache.verify()
    aligned = {}
    for split, consumer in features.items():
        alignment = align_features(consumer, source_features[split], consumer_tokenizer, source_tokenizer)
        covered = sum(int((e > s).sum()) for s, e in alignment) / max(sum(len(s) for s, _ in alignment), 1)
        logger.info("%s: %.1f%% of %s's tokens have a state of %s", split, 100 * covered, config.model,
                    config.source_model)
        aligned[split] = AlignedSource(cache.split(split), alignment, cache.manifest["hidden_size"])
    return aligned, cache
