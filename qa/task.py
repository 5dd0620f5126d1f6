"""Extractive QA as a task of the shared runner: question first, context second, a span as the answer.

A context longer than the window becomes several features (``max_length`` tokens, consecutive
windows sharing ``window_stride`` tokens), each with its own cache rows. A window that does not
hold the whole (first) reference answer points at its first token. Decoding takes, for every
question, the best start/end pair over all of its windows: start <= end, at most
``max_answer_length`` tokens, both inside the context, ranked by start + end logit among the
``n_best`` highest starts and ends of each window.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qa.data import QaDataset, load_dataset, read_squad
from qa.metrics import squad_scores
from recycling.errors import UserError
from recycling.files import write_text
from recycling.heads import SpanHead
from recycling.tasks import Features, Task


@dataclass
class QaMeta:
    """Decode-only metadata of a split's features."""

    example: list[int]  # feature -> index of its question in the split
    # feature -> [tokens, 2] int32: each token's context characters [start, end), -1 where not context
    # (arrays, not tuples: SQuAD's dev set alone has about four million tokens)
    offsets: list[np.ndarray]
    n_best: int
    max_answer_length: int


def answer_positions(offsets: list[tuple[int, int] | None], start_char: int, end_char: int) -> tuple[int, int]:
    """Token positions of the answer's first and last token, or (0, 0) when the window does not
    hold the whole answer."""
    context = [i for i, span in enumerate(offsets) if span is not None]
    if not context:  # a context the tokenizer turns into no tokens at all (e.g. only zero-width spaces)
        return 0, 0
    first, last = context[0], context[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return 0, 0
    start = first
    while start <= last and offsets[start][1] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][0] >= end_char:
        end -= 1
    return start, end


def best_span(logits: torch.Tensor, offsets: np.ndarray, n_best: int, max_answer_length: int):
    """``(score, start, end)`` of the best valid span of one window, or None.

    Candidates are the ``n_best`` highest start and end logits among the context tokens."""
    in_context = torch.from_numpy(offsets[:, 0] >= 0)
    k = min(n_best, int(in_context.sum()))
    if k == 0:
        return None
    starts = torch.topk(logits[:, 0].masked_fill(~in_context, -torch.inf), k).indices.tolist()
    ends = torch.topk(logits[:, 1].masked_fill(~in_context, -torch.inf), k).indices.tolist()
    best = None
    for s in starts:
        for e in ends:
            if e < s or e - s + 1 > max_answer_length:
                continue
            score = float(logits[s, 0] + logits[e, 1])
            if best is None or score > best[0]:
                best = (score, s, e)
    return best


class QaTask(Task):
    name = "qa"

    def load(self, data_dir: str | Path, config) -> QaDataset:
        data = load_dataset(data_dir, config.dataset, config.qa_train_file, config.qa_dev_file,
                            config.qa_test_file, config.dev_fraction)
        return data.head(config.max_examples)

    def load_file(self, path: Path, config, description: dict) -> QaDataset:
        # Spans need no label set: ``description`` has nothing the new file must agree with.
        return QaDataset(config.dataset, {"predict": read_squad(Path(path), require_answers=False)},
                         dev_held_out=False)

    def labelled(self, data: QaDataset, split: str) -> bool:
        return data.splits[split].labelled

    def features(self, data: QaDataset, split: str, tokenizer, config) -> Features:
        examples = data.splits[split].examples
        try:
            # Leading spaces in questions only waste window room (and upset byte-level BPE offsets).
            enc = tokenizer([e.question.lstrip() for e in examples], [e.context for e in examples],
                            truncation="only_second", max_length=config.max_length, stride=config.window_stride,
                            return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
        except Exception as err:  # the tokenizer's own complaint, e.g. a question longer than the window
            raise UserError(f"{data.splits[split].path}: cannot make windows of {config.max_length} tokens "
                            f"with stride {config.window_stride} ({str(err).splitlines()[0]})") from None
        use_types = "token_type_ids" in tokenizer.model_input_names and "token_type_ids" in enc
        meta = QaMeta([], [], config.n_best, config.max_answer_length)
        starts, ends = [], []
        for f, example_index in enumerate(enc["overflow_to_sample_mapping"]):
            sequence = enc.sequence_ids(f)
            offsets = [tuple(span) if sequence[i] == 1 else None for i, span in enumerate(enc["offset_mapping"][f])]
            example = examples[example_index]
            if example.answers:
                start_char = example.answer_starts[0]
                start, end = answer_positions(offsets, start_char, start_char + len(example.answers[0]))
            else:  # a question to predict on: "not in this window" is the placeholder target
                start, end = 0, 0
            starts.append(start)
            ends.append(end)
            meta.example.append(example_index)
            meta.offsets.append(np.array([span or (-1, -1) for span in offsets], dtype=np.int32))
        return Features(list(enc["input_ids"]), {"start_positions": starts, "end_positions": ends},
                        token_type_ids=list(enc["token_type_ids"]) if use_types else None, meta=meta)

    def head(self, data: QaDataset, encoder, config) -> SpanHead:
        return SpanHead(encoder.config.hidden_size)

    def predict(self, data: QaDataset, split: str, features: Features, outputs: list) -> dict[str, str]:
        """``{question id: answer text}``, the best span over all windows of each question."""
        meta: QaMeta = features.meta
        examples = data.splits[split].examples
        best: dict[int, tuple[float, int, int, int]] = {}
        for f, logits in enumerate(outputs):
            span = best_span(logits, meta.offsets[f], meta.n_best, meta.max_answer_length)
            i = meta.example[f]
            if span is not None and (i not in best or span[0] > best[i][0]):
                best[i] = (*span, f)
        answers = {}
        for i, example in enumerate(examples):
            if i not in best:
                answers[example.id] = ""
                continue
            _, s, e, f = best[i]
            answers[example.id] = example.context[meta.offsets[f][s, 0]:meta.offsets[f][e, 1]]
        return answers

    def score(self, data: QaDataset, split: str, features: Features, outputs: list) -> dict[str, float]:
        if not self.labelled(data, split):
            raise UserError(f"{data.splits[split].path}: not every question has an answer, "
                            f"so there is nothing to score")
        return squad_scores(self.predict(data, split, features, outputs), data.splits[split].examples)

    def describe(self, data: QaDataset) -> dict:
        return {"examples": {name: len(s.examples) for name, s in data.splits.items()},
                "dev_held_out_from_train": data.dev_held_out}

    def write_predictions(self, data: QaDataset, split: str, predictions: dict[str, str], path: Path) -> None:
        """The official ``{question id: answer}`` JSON that SQuAD's evaluation script reads."""
        write_text(Path(path), json.dumps(predictions, indent=2, ensure_ascii=False) + "\n")
