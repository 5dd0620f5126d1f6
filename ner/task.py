"""NER as a task of the shared runner: one IOB2 tag per word, predicted on the word's first sub-token.

A sentence longer than ``max_length`` tokens is never cut: it becomes overlapping windows
(``window_stride`` tokens shared by neighbours, window starts on word boundaries), every window a
feature of its own with its own cache rows. Each word is predicted from the window in which it sits
furthest from an edge, so it sees the most context on both sides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from recycling.errors import UserError
from recycling.files import write_text
from recycling.heads import IGNORE, TokenClassificationHead
from recycling.tasks import Features, Task
from ner.data import NerDataset, load_dataset, read_conll
from ner.metrics import ner_scores

logger = logging.getLogger(__name__)


@dataclass
class WordSlots:
    """Decode-only metadata of a split: for sentence s, word w is read at feature
    ``feature[s][w]``, token position ``position[s][w]`` (None: the tokenizer produced no token)."""

    feature: list[list[int | None]]
    position: list[list[int | None]]


def special_layout(tokenizer) -> tuple[int, int]:
    """How many special tokens the tokenizer puts before and after one sequence's tokens."""
    special = set(tokenizer.all_special_ids)
    probe = [next(i for i in range(len(tokenizer)) if i not in special)] * 3
    built = tokenizer.build_inputs_with_special_tokens(probe)
    before = next(i for i in range(len(built)) if built[i:i + 3] == probe)
    return before, len(built) - len(probe) - before


def word_tokenizer(tokenizer):
    """Byte-level BPE tokenizers (RoBERTa) only take pre-split words with a space before each."""
    if getattr(tokenizer, "add_prefix_space", None) is False:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tokenizer.name_or_path, add_prefix_space=True)
    return tokenizer


def windows(starts: list[int], ends: list[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """Word ranges ``[first, last)`` of the windows of one sentence.

    ``starts``/``ends`` are the token offsets of each word; every window holds at most ``budget``
    tokens (a single longer word is truncated by the caller), consecutive windows share about
    ``stride`` tokens, and every word lies in at least one window.
    """
    n = len(starts)
    out, first = [], 0
    while True:
        last = first + 1
        while last < n and ends[last] - starts[first] <= budget:
            last += 1
        out.append((first, last))
        if last == n:
            return out
        # The next window starts at the first word that begins within `stride` tokens of this one's end.
        nxt = first + 1
        while nxt < last and starts[nxt] < ends[last - 1] - stride:
            nxt += 1
        first = nxt


class NerTask(Task):
    name = "ner"

    def load(self, data_dir: str | Path, config) -> NerDataset:
        return load_dataset(data_dir, config.dataset).head(config.max_examples)

    def load_file(self, path: Path, config, description: dict) -> NerDataset:
        tag_names = self.saved_labels(description)
        split = read_conll(Path(path), require_tags=False, tag_names=tag_names)
        return NerDataset(config.dataset, {"predict": split}, tag_names)

    def labelled(self, data: NerDataset, split: str) -> bool:
        return data.splits[split].labelled

    def features(self, data: NerDataset, split: str, tokenizer, config) -> Features:
        sentences = data.splits[split].sentences
        tag_id = {tag: i for i, tag in enumerate(data.tag_names)}
        before, after = special_layout(tokenizer)
        budget = config.max_length - before - after
        encoded = word_tokenizer(tokenizer)([s.words for s in sentences], is_split_into_words=True,
                                            add_special_tokens=False, verbose=False)
        input_ids, labels = [], []
        slots = WordSlots([], [])
        windowed = truncated = silent = 0
        for s, sentence in enumerate(sentences):
            pieces: list[list[int]] = [[] for _ in sentence.words]
            for token, word in zip(encoded["input_ids"][s], encoded.word_ids(s)):
                pieces[word].append(token)
            for i, p in enumerate(pieces):
                if len(p) > budget:  # one "word" longer than a window: keep its first `budget` pieces
                    pieces[i] = p[:budget]
                    truncated += 1
            starts, ends, offset = [], [], 0
            for p in pieces:
                starts.append(offset)
                offset += len(p)
                ends.append(offset)
            spans = windows(starts, ends, budget, config.window_stride)
            windowed += len(spans) > 1
            best = [(-1, None, None)] * len(pieces)  # (distance to the nearest edge, feature, position)
            for first, last in spans:
                feature = len(input_ids)
                tokens = [t for p in pieces[first:last] for t in p]
                target = [IGNORE] * len(tokens)
                for w in range(first, last):
                    if not pieces[w]:
                        continue
                    at = starts[w] - starts[first]
                    # Unlabelled (a file to predict on): no targets at all, so the loss reads nothing.
                    if sentence.tags is not None:
                        target[at] = tag_id[sentence.tags[w]]
                    margin = min(at, len(tokens) - 1 - at)
                    if margin > best[w][0]:
                        best[w] = (margin, feature, at + before)
                input_ids.append(tokenizer.build_inputs_with_special_tokens(tokens))
                labels.append([IGNORE] * before + target + [IGNORE] * after)
            slots.feature.append([b[1] for b in best])
            slots.position.append([b[2] for b in best])
            silent += sum(not p for p in pieces)
        if windowed:
            logger.info("%s: %d sentences are longer than max_length=%d tokens and were split into windows",
                        split, windowed, config.max_length)
        if truncated:
            logger.warning("%s: %d words longer than a whole window were cut to %d tokens", split, truncated, budget)
        if silent:
            logger.warning("%s: %d words have no token at all; they are predicted as O", split, silent)
        return Features(input_ids, {"labels": labels}, meta=slots)

    def head(self, data: NerDataset, encoder, config) -> TokenClassificationHead:
        return TokenClassificationHead(encoder.config.hidden_size, len(data.tag_names), config.head_dropout)

    def predict(self, data: NerDataset, split: str, features: Features, outputs: list) -> list[list[str]]:
        """Tags per word, each read from the window where the word is most central."""
        slots: WordSlots = features.meta
        tags = []
        for feats, positions in zip(slots.feature, slots.position):
            tags.append(["O" if f is None else data.tag_names[int(outputs[f][p].argmax())]
                         for f, p in zip(feats, positions)])
        return tags

    def score(self, data: NerDataset, split: str, features: Features, outputs: list) -> dict[str, float]:
        if not self.labelled(data, split):
            raise UserError(f"{data.splits[split].path}: not every word has a tag, so there is nothing to score")
        gold = [s.tags for s in data.splits[split].sentences]
        return ner_scores(gold, self.predict(data, split, features, outputs), data.tag_names)

    def describe(self, data: NerDataset) -> dict:
        return {"label_names": data.tag_names,
                "examples": {name: len(s.sentences) for name, s in data.splits.items()}}

    def write_predictions(self, data: NerDataset, split: str, predictions: list[list[str]], path: Path) -> None:
        """CoNLL: ``word<TAB>tag`` per word, a blank line after each sentence; reads back with ``read_conll``."""
        sentences = data.splits[split].sentences
        if len(predictions) != len(sentences) or any(len(p) != len(s.words) for p, s in zip(predictions, sentences)):
            raise ValueError("predictions do not match the split's sentences word for word")
        blocks = ("".join(f"{word}\t{tag}\n" for word, tag in zip(s.words, tags))
                  for s, tags in zip(sentences, predictions))
        write_text(Path(path), "\n".join(blocks))
