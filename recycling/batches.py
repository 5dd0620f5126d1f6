"""Batches for both sides: token ids from text, or hidden states from the cache.

Both are padded per batch to the batch's longest example, never to ``max_length``.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler
from transformers.trainer_pt_utils import LengthGroupedSampler

from recycling.encoders import pad_ids


class TokenizedSplit(Dataset):
    def __init__(self, input_ids: list[list[int]], labels: list[int], pad_id: int):
        self.input_ids = input_ids
        self.labels = labels
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.input_ids[i], self.labels[i]

    def collate(self, items) -> dict:
        ids, mask = pad_ids([ids for ids, _ in items], self.pad_id)
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.tensor([label for _, label in items], dtype=torch.long)}


def collate_hidden(items) -> dict:
    lengths = [h.shape[0] for h, _ in items]
    hidden = torch.zeros(len(items), max(lengths), items[0][0].shape[1], dtype=items[0][0].dtype)
    mask = torch.zeros(len(items), max(lengths), dtype=torch.long)
    for i, (h, _) in enumerate(items):
        hidden[i, : h.shape[0]] = h
        mask[i, : h.shape[0]] = 1
    return {"hidden": hidden, "attention_mask": mask,
            "labels": torch.tensor([label for _, label in items], dtype=torch.long)}


def lengths(dataset: Dataset) -> list[int]:
    if isinstance(dataset, TokenizedSplit):
        return [len(ids) for ids in dataset.input_ids]
    return dataset.lengths.tolist()


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0,
                group_by_length: bool = True) -> DataLoader:
    """A loader padding per batch.

    Shuffled loaders draw a new order every epoch from a generator seeded once per run; with
    ``group_by_length`` each batch holds examples of similar length (transformers'
    ``LengthGroupedSampler``), which cuts padding for the text and the cached side alike.
    Unshuffled (evaluation) loaders simply go through the examples from longest to shortest.
    """
    collate = dataset.collate if isinstance(dataset, TokenizedSplit) else collate_hidden
    sizes = lengths(dataset)
    if shuffle:
        generator = torch.Generator().manual_seed(seed)
        if group_by_length:
            sampler = LengthGroupedSampler(batch_size, lengths=sizes, generator=generator)
        else:
            sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = sorted(range(len(sizes)), key=lambda i: -sizes[i]) if group_by_length else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
