"""Offline fixtures: a tiny random BERT with a character-level WordPiece tokenizer, saved to disk."""

from __future__ import annotations

import json
import string
from pathlib import Path

from transformers import BertConfig, BertModel, BertTokenizerFast


def save_tiny_bert(folder: Path, seed: int = 0, layers: int = 4, words: tuple[str, ...] = (),
                   hidden_size: int = 32, dropout: float = 0.1) -> Path:
    """Characters are tokens; ``words`` added to the vocabulary become single tokens (another
    tokenization of the same text)."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(chars) + [f"##{c}" for c in chars] + list(words)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=4, intermediate_size=37, max_position_embeddings=512,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
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


def write_squad(path: Path, articles: list[list[tuple[str, list[tuple[str, str]]]]]) -> Path:
    """SQuAD v1.1 JSON: articles of paragraphs ``(context, [(question, answer), ...])``; each answer's
    start is its first occurrence in the context; ids are ``q<article>_<paragraph>_<question>``."""
    data = []
    for a, paragraphs in enumerate(articles):
        entry = {"title": f"article {a}", "paragraphs": []}
        for p, (context, questions) in enumerate(paragraphs):
            qas = [{"id": f"q{a}_{p}_{q}", "question": question,
                    "answers": [{"text": answer, "answer_start": context.index(answer)}]}
                   for q, (question, answer) in enumerate(questions)]
            entry["paragraphs"].append({"context": context, "qas": qas})
        data.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


def write_toy_squad(folder: Path, n_articles: int = 6) -> Path:
    """Colour questions: the answer is the word after "is"; contexts long enough for several windows."""
    colours = ["red", "blue", "green", "black", "white", "pink"]
    things = ["car", "sky", "tree", "cat", "house", "boat"]
    articles = []
    for a in range(n_articles):
        paragraphs = []
        for p in range(2):
            t, c = things[(a + p) % 6], colours[(a + 2 * p) % 6]
            filler = " ".join(["some words here"] * (3 + a % 3))
            context = f"{filler}. the {t} is {c}. {filler} and more text follows."
            paragraphs.append((context, [(f"what colour is the {t}?", c), (f"which thing is {c}?", t)]))
        articles.append(paragraphs)
    write_squad(folder / "train-v1.1.json", articles)
    write_squad(folder / "dev-v1.1.json", articles[:3])
    return folder
