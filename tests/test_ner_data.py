import re
from pathlib import Path

import pytest

from ner.data import NerDataset, Sentence, load_dataset, read_conll, to_iob2
from recycling.errors import UserError
from tests import faults

# Two documents; the middle sentence is followed straight by -DOCSTART-, and the file lacks a final newline.
TAB_FILE = (
    "-DOCSTART- (1)\n"
    "\n"
    "Aspirin\tNN\tO\tB-Chem\n"
    "helps\tVB\tO\tO\n"
    "\n"
    "\n"
    "\n"
    "Pain\tNN\tO\tI-Dis\n"
    "-DOCSTART- (2)\n"
    "\n"
    "It\tPRP\tO\tO\n"
    "works\tVB\tO\tO"
)
TAB_SENTENCES = [
    Sentence(["Aspirin", "helps"], ["B-Chem", "O"], 3),
    Sentence(["Pain"], ["B-Dis"], 8),
    Sentence(["It", "works"], ["O", "O"], 11),
]


def write(path: Path, text: str | bytes) -> Path:
    """Write bytes exactly as given, so CRLF and BOM tests control every byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def write_dataset(data_dir: Path, train: str, dev: str, test: str, name: str = "toy") -> Path:
    folder = data_dir / "ner" / name
    for split, text in (("train", train), ("dev", dev), ("test", test)):
        write(folder / f"{split}.txt", text)
    return folder


def test_tab_separated_docstart_blank_runs_and_no_trailing_newline(tmp_path):
    split = read_conll(write(tmp_path / "x.txt", TAB_FILE))
    assert split.sentences == TAB_SENTENCES
    assert split.path == tmp_path / "x.txt"


def test_crlf_and_bom_read_like_plain_lf(tmp_path):
    crlf = b"\xef\xbb\xbf" + (TAB_FILE.replace("\n", "\r\n") + "\r\n").encode()
    assert read_conll(write(tmp_path / "x.txt", crlf)).sentences == TAB_SENTENCES


def test_space_separated_tag_is_last_of_four_columns(tmp_path):
    text = "EU  NNP B-NP   B-ORG\nrejects VBZ B-VP O\n\n   \nGerman JJ B-NP I-MISC\n"
    sentences = read_conll(write(tmp_path / "x.txt", text)).sentences
    assert sentences == [Sentence(["EU", "rejects"], ["B-ORG", "O"], 1),
                         Sentence(["German"], ["B-MISC"], 5)]


def test_two_column_file(tmp_path):
    sentences = read_conll(write(tmp_path / "x.txt", "a O\nb B-X\n")).sentences
    assert sentences == [Sentence(["a", "b"], ["O", "B-X"], 1)]


@pytest.mark.parametrize("tags,expected", [
    ("O I-X I-X O I-X B-X", "O B-X I-X O B-X B-X"),  # IOB1
    ("I-A I-B", "B-A B-B"),  # IO: a type change starts a mention
    ("B-A I-A B-A I-A O", "B-A I-A B-A I-A O"),  # already IOB2
    ("I I O I B I", "B I O B B I"),  # untyped
    ("B I-X I", "B B-X B"),  # bare and typed tags have different types
    ("", ""),
])
def test_to_iob2(tags, expected):
    assert to_iob2(tags.split()) == expected.split()


def test_iob1_file_is_normalized(tmp_path):
    text = "".join(f"w{i}\t{t}\n" for i, t in enumerate("O I-X I-X O I-X B-X".split()))
    assert read_conll(write(tmp_path / "x.txt", text)).sentences[0].tags == "O B-X I-X O B-X B-X".split()


def test_to_iob2_rejects_unknown_tags():
    with pytest.raises(ValueError, match="E-X"):
        to_iob2(["O", "E-X"])


BAD_LINES = {
    "a tag X-Foo": ("w\tNN\tX-Foo", r"x\.txt:3: unknown tag 'X-Foo' \(expected O, B-TYPE, I-TYPE, B or I\)"),
    "an IOBES tag E-Foo": ("w\tE-Foo", r"x\.txt:3: unknown tag 'E-Foo'"),
    "an IOBES tag S-Foo": ("w\tS-Foo", r"x\.txt:3: unknown tag 'S-Foo'"),
    "a tag foo": ("w\tfoo", r"x\.txt:3: unknown tag 'foo'"),
    "a tag B- without a type": ("w\tB-", r"x\.txt:3: unknown tag 'B-'"),
    "a word without a tag column": ("lonely", r"x\.txt:3: expected at least 2 columns"),
}


@pytest.mark.parametrize("fault", BAD_LINES)
def test_bad_lines_name_file_and_line(tmp_path, fault):
    bad_line, message = BAD_LINES[fault]
    path = write(tmp_path / "x.txt", f"a\tO\n\n{bad_line}\nb\tO\n")
    with pytest.raises(UserError, match=message) as err:
        read_conll(path)
    assert str(err.value).startswith(f"{path}:3: ") and "\n" not in str(err.value)
    faults.record("data", f"{fault} in a CoNLL file", str(err.value), tmp_path)


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = write(tmp_path / "x.txt", b"a\tO\r\nb\tO\r\n\xff\xfeoops\tO\r\n")
    with pytest.raises(UserError, match=r"x\.txt:3: not valid UTF-8") as err:
        read_conll(path)
    assert str(err.value).startswith(f"{path}:3: ")
    faults.record("data", "a CoNLL file with bytes that are not UTF-8", str(err.value), tmp_path)


def test_a_directory_and_an_unreadable_file(tmp_path, monkeypatch):
    (tmp_path / "d.txt").mkdir()
    with pytest.raises(UserError) as err:
        read_conll(tmp_path / "d.txt")
    assert str(err.value) == f"{tmp_path / 'd.txt'}: is a directory, not a data file"
    faults.record("data", "a CoNLL split that is a directory", str(err.value), tmp_path)
    path = write(tmp_path / "x.txt", "a\tO\n")

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(Path, "read_bytes", refuse)  # tests may run as root, where chmod 000 reads anyway
    with pytest.raises(UserError) as err:
        read_conll(path)
    assert str(err.value) == f"{path}: cannot read (Permission denied)"
    faults.record("data", "a CoNLL file without read permission", str(err.value), tmp_path)


def test_non_ascii_words_are_kept(tmp_path):
    sentences = read_conll(write(tmp_path / "x.txt", "Café\tO\nβ-catenin\tB-Gene\n")).sentences
    assert sentences[0].words == ["Café", "β-catenin"]


def test_file_without_sentences(tmp_path):
    path = write(tmp_path / "x.txt", "-DOCSTART- -X- O\n\n  \n")
    with pytest.raises(UserError, match=re.escape(f"{path}: no sentences")) as err:
        read_conll(path)
    faults.record("data", "a CoNLL file with only -DOCSTART- and blank lines", str(err.value), tmp_path)


def test_load_dataset_tag_names_and_head(tmp_path):
    write_dataset(tmp_path, train="a\tI-Dis\nb\tI-Dis\n\nc\tB-Chem\nd\tO\n",
                  dev="e\tI-Chem\n\nf\tO\n", test="g\tB-Dis\nh\tI-Dis\n")
    ds = load_dataset(tmp_path, "toy")
    assert ds.name == "toy"
    assert ds.tag_names == ["O", "B-Chem", "B-Dis", "I-Dis"]
    assert [len(ds.splits[s].sentences) for s in ("train", "dev", "test")] == [2, 2, 1]
    assert ds.splits["dev"].sentences[0].tags == ["B-Chem"]  # IO in dev is normalized before the check
    small = ds.head(1)
    assert isinstance(small, NerDataset) and small.tag_names == ds.tag_names
    assert [len(small.splits[s].sentences) for s in ("train", "dev", "test")] == [1, 1, 1]
    assert ds.head(None) is ds


def test_dev_tag_not_in_train_names_its_line(tmp_path):
    # train is IO, so its normalized tags are O and B-X only; dev's I-X on line 5 is unseen.
    folder = write_dataset(tmp_path, train="a\tI-X\n\nb\tO\n", dev="c\tO\n\n\nd\tB-X\ne\tI-X\n",
                           test="f\tO\n")
    with pytest.raises(UserError) as err:
        load_dataset(tmp_path, "toy")
    assert str(err.value) == f"{folder / 'dev.txt'}:5: tag 'I-X' not in train (train has: O, B-X)"
    faults.record("data", "a dev tag that train lacks (NER)", str(err.value), tmp_path)


def test_empty_split(tmp_path):
    folder = write_dataset(tmp_path, train="a\tO\n", dev="a\tO\n", test="\n\n")
    with pytest.raises(UserError, match=re.escape(f"{folder / 'test.txt'}: no sentences")):
        load_dataset(tmp_path, "toy")


def test_missing_paths(tmp_path):
    with pytest.raises(UserError, match=r"data directory not found: .*nowhere \(set --data-dir or ER_DATA_DIR\)"):
        load_dataset(tmp_path / "nowhere", "toy")
    with pytest.raises(UserError, match=r"dataset 'toy' not found: no folder .*ner/toy"):
        load_dataset(tmp_path, "toy")
    folder = tmp_path / "ner" / "toy"
    write(folder / "train.txt", "a\tO\n")
    with pytest.raises(UserError, match=re.escape(f"missing data file: {folder / 'dev.txt'}")):
        load_dataset(tmp_path, "toy")


@pytest.mark.parametrize("name", ["../x", "..", ".", "a/b", ""])
def test_name_must_be_a_plain_folder(tmp_path, name):
    # Valid datasets sit where "../x" and "a/b" would lead, so only the name check can refuse them.
    for folder in (tmp_path / "x", tmp_path / "ner" / "a" / "b"):
        for split in ("train", "dev", "test"):
            write(folder / f"{split}.txt", "a\tO\n")
    with pytest.raises(UserError, match=f"invalid dataset name '{re.escape(name)}'"):
        load_dataset(tmp_path, name)


def count_sentences(path: Path) -> int:
    """Blank-line-separated blocks with at least one word line, counted without the reader."""
    blocks = re.split(r"\n[ \t\r]*\n", path.read_text(encoding="utf-8"))
    return sum(any(ln.strip() and not ln.startswith("-DOCSTART-") for ln in b.split("\n")) for b in blocks)


def test_shared_bc5cdr(shared_data):
    ds = load_dataset(shared_data, "bc5cdr")
    folder = shared_data / "ner" / "bc5cdr"
    counts = [len(ds.splits[s].sentences) for s in ("train", "dev", "test")]
    assert counts == [count_sentences(folder / f"{s}.txt") for s in ("train", "dev", "test")]
    assert counts == [3942, 3949, 4139]
    assert ds.tag_names == ["O", "B-Entity", "I-Entity"]
    train = ds.splits["train"].sentences
    assert all(s.tags[0] != "I-Entity" for s in train)
    assert not any(a == "O" and b == "I-Entity" for s in train for a, b in zip(s.tags, s.tags[1:]))
    # Within sentences the raw file has I-Entity after O 6,375 times (the dataset README's count);
    # every raw mention start, wherever it is, must come out as exactly one B-Entity.
    lines = (folder / "train.txt").read_text(encoding="utf-8").split("\n")
    raw = [ln.split("\t")[-1] if ln.strip() and not ln.startswith("-DOCSTART-") else None for ln in lines]
    pairs = list(zip([None] + raw, raw))
    assert sum(a == "O" and b == "I-Entity" for a, b in pairs) == 6375
    starts = sum(b == "B-Entity" or (b == "I-Entity" and a not in ("B-Entity", "I-Entity")) for a, b in pairs)
    assert sum(t == "B-Entity" for s in train for t in s.tags) == starts
    first = train[0]
    assert first.words[0] == "Naloxone" and first.tags[0] == "B-Entity" and first.line == 3


def test_shared_ncbi_disease(shared_data):
    ds = load_dataset(shared_data, "NCBI-disease")
    folder = shared_data / "ner" / "NCBI-disease"
    assert ds.tag_names == ["O", "B-Disease", "I-Disease"]
    counts = [len(ds.splits[s].sentences) for s in ("train", "dev", "test")]
    assert counts == [count_sentences(folder / f"{s}.txt") for s in ("train", "dev", "test")]
    assert counts == [5424, 923, 940]


def test_unlabelled_files_one_column_or_all_columns(tmp_path):
    words = read_conll(write(tmp_path / "w.txt", "-DOCSTART-\n\nAspirin\nhelps\n\nPain\n"), require_tags=False)
    assert not words.labelled
    assert words.sentences == [Sentence(["Aspirin", "helps"], None, 3), Sentence(["Pain"], None, 6)]
    full = read_conll(write(tmp_path / "f.txt", TAB_FILE), require_tags=False)
    assert full.labelled and full.sentences == TAB_SENTENCES
    # one word without its tag: nothing of the file is scored, words are all still there
    mixed = read_conll(write(tmp_path / "m.txt", "a\tB-X\nb\n\nc\tO\n"), require_tags=False)
    assert not mixed.labelled and [s.tags for s in mixed.sentences] == [None, None]
    assert [s.words for s in mixed.sentences] == [["a", "b"], ["c"]]


def test_tags_present_in_an_unlabelled_file_are_still_checked(tmp_path):
    path = write(tmp_path / "x.txt", "a\nb\tE-X\n")
    with pytest.raises(UserError, match=re.escape(f"{path}:2: unknown tag 'E-X'")):
        read_conll(path, require_tags=False)


def test_a_tag_outside_the_saved_set_names_its_line_after_normalization(tmp_path):
    path = write(tmp_path / "x.txt", "a\tO\n\nb\tI-X\nc\tI-Y\n")  # IO: I-Y starts a mention, so B-Y
    with pytest.raises(UserError) as err:
        read_conll(path, require_tags=False, tag_names=["O", "B-X", "I-X"])
    assert str(err.value) == f"{path}:4: tag 'B-Y' is not one the model was trained on (it knows: O, B-X, I-X)"
    faults.record("data", "a tag the saved model does not know, in a CoNLL file to predict on", str(err.value),
                  tmp_path)
