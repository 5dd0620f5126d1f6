"""Offline fixtures: a tiny random BERT with a character-level WordPiece tokenizer, saved to disk."""

from __future__ import annotations

import json
import string
from pathlib import Path

from transformers import BertConfig, BertModel, BertTokenizerFast


def save_tiny_bert(folder: Path, seed: int = 0, layers: int = 4) -> Path:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(chars) + [f"##{c}" for c in chars]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=512)
    BertModel(config).save_pretrained(folder)
    return folder


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_toy_dataset(data_dir: Path, name: str = "toy", n_train: int = 24) -> Path:
    """A learnable two-class task: texts about cats vs. texts about dogs."""
    def rows(n, offset):
        return [{"text": f"{'cats purr' if i % 2 else 'dogs bark'} sample {i + offset}",
                 "label": "cat" if i % 2 else "dog"} for i in range(n)]
    folder = data_dir / "text_classification" / name
    write_jsonl(folder / "train.txt", rows(n_train, 0))
    write_jsonl(folder / "dev.txt", rows(8, 100))
    write_jsonl(folder / "test.txt", rows(8, 200))
    return folder


def write_conll(path: Path, sentences: list[list[tuple[str, str]]]) -> Path:
    """Sentences of (word, tag) pairs in the released 4-column, tab-separated layout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = ["\n".join(f"{w}\tNN\tO\t{t}" for w, t in sentence) for sentence in sentences]
    path.write_text("-DOCSTART- (1)\n\n" + "\n\n".join(blocks) + "\n")
    return path


def write_toy_ner(data_dir: Path, name: str = "toy", long_words: int = 0) -> Path:
    """Learnable tags: animal names are entities (sometimes two words), everything else is O.

    ``long_words`` > 0 adds a train and a test sentence of that many words, to exercise windows.
    """
    animals = ["cat", "dog", "owl", "bat"]

    def sentence(i):
        a = animals[i % 4]
        if i % 3 == 0:
            return [("the", "O"), ("big", "O"), (a, "B-Animal"), (a + "s", "I-Animal"), ("run", "O")]
        return [("a", "O"), (a, "B-Animal"), ("sat", "O"), ("here", "O")]

    def long_sentence():
        return [(animals[i % 4], "B-Animal") if i % 5 == 0 else ("word", "O") for i in range(long_words)]

    folder = data_dir / "ner" / name
    extra = [long_sentence()] if long_words else []
    write_conll(folder / "train.txt", [sentence(i) for i in range(24)] + extra)
    write_conll(folder / "dev.txt", [sentence(i) for i in range(100, 108)])
    write_conll(folder / "test.txt", [sentence(i) for i in range(200, 208)] + extra)
    return folder
