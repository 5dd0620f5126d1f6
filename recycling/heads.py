"""Task heads on the encoder's final hidden states.

Every head takes ``(hidden [batch, seq, hidden], attention_mask [batch, seq])`` and owns its loss
and target keys: ``loss(outputs, batch)`` returns ``(sum of the loss terms, number of terms)`` so
that training takes the mean and evaluation can average over a whole split exactly;
``unbatch(outputs, batch)`` returns one raw output per feature (CPU tensors, padding removed),
which the task decodes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import cross_entropy

IGNORE = -100  # target of tokens that have none (later sub-tokens, special tokens, padding)


def lengths(attention_mask: torch.Tensor) -> list[int]:
    return attention_mask.sum(1).tolist()


class SequenceClassificationHead(nn.Module):
    """One label per feature, from the first token or from the mean over the real tokens."""

    target_keys = ("labels",)

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, pooling: str = "cls"):
        super().__init__()
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, num_labels)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.pool(hidden, attention_mask))
        x = self.dropout(torch.tanh(self.dense(x)))
        return self.out(x)

    def loss(self, logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, int]:
        labels = batch["labels"]
        return cross_entropy(logits.float(), labels, reduction="sum"), labels.numel()

    def unbatch(self, logits: torch.Tensor, batch: dict) -> list[torch.Tensor]:
        return list(logits.float().cpu())


class TokenClassificationHead(nn.Module):
    """One label per token; tokens whose target is ``IGNORE`` add nothing to the loss."""

    target_keys = ("labels",)

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(hidden))

    def loss(self, logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        labels = batch["labels"]
        total = cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                              reduction="sum")
        # A batch of windows without any labelled token still needs a well-defined (zero) mean.
        # On the device: reading the count on the host would make every step wait for the device.
        return total, (labels != IGNORE).sum().clamp(min=1)

    def unbatch(self, logits: torch.Tensor, batch: dict) -> list[torch.Tensor]:
        rows = logits.float().cpu()
        return [rows[i, :n] for i, n in enumerate(lengths(batch["attention_mask"]))]


class SpanHead(nn.Module):
    """Start and end logits over the tokens (extractive QA), as transformers' QA heads: a linear
    layer on the final hidden states, no extra dropout. Padding positions can never be chosen."""

    target_keys = ("start_positions", "end_positions")

    def __init__(self, hidden_size: int):
        super().__init__()
        self.out = nn.Linear(hidden_size, 2)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.out(hidden).float()
        return logits.masked_fill(attention_mask.unsqueeze(-1) == 0, -1e4)

    def loss(self, logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, int]:
        start = cross_entropy(logits[..., 0], batch["start_positions"], reduction="sum")
        end = cross_entropy(logits[..., 1], batch["end_positions"], reduction="sum")
        return (start + end) / 2, batch["start_positions"].numel()

    def unbatch(self, logits: torch.Tensor, batch: dict) -> list[torch.Tensor]:
        rows = logits.cpu()
        return [rows[i, :n] for i, n in enumerate(lengths(batch["attention_mask"]))]
