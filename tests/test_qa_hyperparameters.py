"""Every QA experiment file under HyperparameterSelection/qa/ loads as a QA config with the paper's
SQuAD settings; learning rates and bottlenecks match the original release's CSVs (SQuAD and
TriviaQA rows) and, for DeBERTa-v2-XL, the values hard-coded in the original scripts; the CPU-sized
all-MiniLM-L6-v2 files are as documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from recycling.config import load_config
from recycling.errors import UserError
from tests.test_hyperparameters import chain_sets, csv_rows

ROOT = Path(__file__).resolve().parents[1]
QA = ROOT / "HyperparameterSelection" / "qa"
YAMLS = sorted(QA.glob("*.yaml"))

DATASETS = {"squad": "SQuAD", "triviaqa": "TriviaQA"}  # folder (and file suffix) -> CSV row
TRIVIAQA_FILES = ("train.json", "dev.json", "test.json")  # what QA_Scripts/prepare_triviaqa.py writes
# base file -> (semi-frozen CSV column prefix, QA cut (a quarter, or 2 of 6), other cuts,
#               adapter CSV column or None, the cut that column was tuned at)
CSV_MODELS = {
    "roberta_large": ("RoBERTa-Large:", 6, (12, 18),
                      "RoBERTa frozen + Unfrozen Adapters on later 12 layers + Unfrozen Classifier", 12),
    "bert_base": ("BERT", 3, (6, 9),
                  "BERT frozen + Unfrozen Adapters on later 6 layers + Unfrozen Classifier", 6),
    "minilmv2_h384": ("MiniLM - 6L H384:", 2, (3, 4), None, None),
    "minilmv2_h768": ("MiniLM - 6L H768:", 2, (3, 4), None, None),
    "distilbert": ("DistilBERT:", 2, (3, 4), None, None),
}
EXPERIMENT = re.compile(r"^(?P<model>[a-z0-9_]+?)_(?P<data>squad|triviaqa)(_cut(?P<cut>\d+))?$")
ALL_MODES = ["full", "semi_frozen", "adapters", "adapters_full"]


def column(row: dict[str, str], prefix: str, cut: int | None = None) -> str:
    """The cell of ``row`` for the model ``prefix`` with ``cut`` layers frozen (None: fully finetuned)."""
    wanted = "Fully Finetuned" if cut is None else f"{cut} Layers Frozen"
    names = [c for c in row if c.startswith(prefix) and wanted in c]
    assert len(names) == 1, (prefix, wanted, names)
    return row[names[0]]


def test_there_are_qa_experiment_files():
    assert len(YAMLS) > 35


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_every_qa_file_loads(path):
    assert not chain_sets(path, "pooling"), "QA uses a span head: no pooling key"
    if not chain_sets(path, "dataset"):
        with pytest.raises(UserError, match="missing required key"):
            load_config(path)
        return
    config, sources = load_config(path)
    assert (config.task, config.metric) == ("qa", "f1")
    assert (config.max_length, config.window_stride) == (384, 128)
    assert (config.max_answer_length, config.n_best) == (30, 20)
    assert config.dataset in DATASETS and config.model and config.cut_layer >= 1
    assert sources["task"].endswith("qa/defaults.yaml")
    match = EXPERIMENT.match(path.stem)
    assert match, f"{path.name}: expected <base>_<dataset>[_cut<k>].yaml"
    assert config.dataset == match["data"]
    if match["cut"]:
        assert config.cut_layer == int(match["cut"])
    files = (config.qa_train_file, config.qa_dev_file, config.qa_test_file)
    if config.dataset == "triviaqa":
        assert files == TRIVIAQA_FILES
    else:
        assert files == ("train-v1.1.json", None, "dev-v1.1.json") and config.dev_fraction == 0.05


def test_defaults():
    data = yaml.safe_load((QA / "defaults.yaml").read_text())
    assert (data["task"], data["metric"]) == ("qa", "f1")
    assert (data["max_length"], data["window_stride"], data["max_answer_length"], data["n_best"]) == (384, 128, 30, 20)
    assert data["patience"] == 3 and data["modes"] == ALL_MODES and data["seeds"] == [0]
    assert (data["batch_size"], data["warmup_steps"], data["max_epochs"]) == (32, 100, 10)
    assert (data["adapter_size"], data["head_dropout"], data["cache_dtype"]) == (64, 0.1, "float16")


@pytest.mark.parametrize("model, layers", [
    ("roberta_large", 24), ("bert_base", 12), ("scibert", 12), ("deberta_v2_xlarge", 24),
    ("minilmv2_h384", 6), ("minilmv2_h768", 6), ("distilbert", 6), ("minilm_l6_cpu", 6),
])
def test_base_files_cut_a_quarter(model, layers):
    data = yaml.safe_load((QA / f"{model}.yaml").read_text())
    assert data["cut_layer"] == (layers // 4 if layers > 6 else 2)  # 6 layers: the CSVs' 33% cut


# --- encoded values against the release CSVs ----------------------------------------------------

@pytest.mark.parametrize("file, mode, dataset, header", [
    ("roberta_large_squad", "full", "SQuAD", "RoBERTa-Large: Fully Finetuned"),
    ("roberta_large_squad", "semi_frozen", "SQuAD", "RoBERTa-Large: 6 Layers Frozen (25%)"),
    ("roberta_large_triviaqa_cut18", "semi_frozen", "TriviaQA", "RoBERTa-Large: 18 Layers Frozen (75%)"),
    ("bert_base_squad_cut9", "semi_frozen", "SQuAD", "BERT: 9 Layers Frozen (75%)"),
    ("bert_base_triviaqa", "full", "TriviaQA", "BERT Fully Finetuned"),
    ("minilmv2_h384_triviaqa", "semi_frozen", "TriviaQA", "MiniLM - 6L H384: 2 Layers Frozen (33%)"),
    ("minilmv2_h768_squad_cut4", "semi_frozen", "SQuAD", "MiniLM - 6L H768: 4 Layers Frozen (66%)"),
    ("distilbert_squad", "semi_frozen", "SQuAD", "DistilBERT: 2 Layers Frozen (33%)"),
    ("distilbert_triviaqa_cut4", "semi_frozen", "TriviaQA", "DistilBERT: 4 Layers Frozen (66%)"),
])
def test_semifrozen_csv_values(file, mode, dataset, header):
    lrs, _ = csv_rows("within_model_semifrozen.csv")
    config, _ = load_config(QA / f"{file}.yaml")
    assert config.learning_rate[mode] == pytest.approx(float(lrs[dataset][header]))


@pytest.mark.parametrize("file, dataset, header", [
    ("roberta_large_squad_cut12", "SQuAD", CSV_MODELS["roberta_large"][3]),
    ("roberta_large_triviaqa_cut12", "TriviaQA", CSV_MODELS["roberta_large"][3]),
    ("bert_base_squad_cut6", "SQuAD", CSV_MODELS["bert_base"][3]),
    ("bert_base_triviaqa_cut6", "TriviaQA", CSV_MODELS["bert_base"][3]),
])
def test_adapter_csv_values(file, dataset, header):
    lrs, bottlenecks = csv_rows("within_model_adapters.csv")
    config, _ = load_config(QA / f"{file}.yaml")
    assert config.modes == ALL_MODES
    assert config.learning_rate["adapters"] == config.learning_rate["adapters_full"]
    assert config.learning_rate["adapters"] == pytest.approx(float(lrs[dataset][header]))
    assert config.adapter_size == int(float(bottlenecks[dataset][header]))


@pytest.mark.parametrize("model", CSV_MODELS)
@pytest.mark.parametrize("suffix", DATASETS)
def test_every_csv_cell_has_its_file(model, suffix):
    """Full and the QA cut sit in the dataset file; every other cut in a _cut<k> file that keeps the
    dataset file's full rate; adapters only at the cut their CSV column names."""
    lrs, _ = csv_rows("within_model_semifrozen.csv")
    prefix, quarter, others, adapter_column, adapter_cut = CSV_MODELS[model]
    row = lrs[DATASETS[suffix]]
    config, _ = load_config(QA / f"{model}_{suffix}.yaml")
    assert config.cut_layer == quarter and config.modes == ["full", "semi_frozen"]
    assert config.learning_rate["full"] == pytest.approx(float(column(row, prefix)))
    assert config.learning_rate["semi_frozen"] == pytest.approx(float(column(row, prefix, quarter)))
    for cut in others:
        variant, sources = load_config(QA / f"{model}_{suffix}_cut{cut}.yaml")
        assert variant.cut_layer == cut
        assert variant.learning_rate["semi_frozen"] == pytest.approx(float(column(row, prefix, cut)))
        assert variant.learning_rate["full"] == config.learning_rate["full"]
        assert sources["model"].endswith(f"qa/{model}.yaml")
        assert variant.modes == (ALL_MODES if cut == adapter_cut else ["full", "semi_frozen"])


def test_adapter_csv_full_rates_agree_with_the_semifrozen_csv():
    """Both CSVs carry a fully-finetuned QA rate; the files can only encode one, so they must agree."""
    semi, _ = csv_rows("within_model_semifrozen.csv")
    adapters, _ = csv_rows("within_model_adapters.csv")
    for dataset in DATASETS.values():
        assert adapters[dataset]["RoBERTa Large Finetuned"] == semi[dataset]["RoBERTa-Large: Fully Finetuned"]
        assert adapters[dataset]["BERT Fully Finetuned"] == semi[dataset]["BERT Fully Finetuned"]


def test_scibert_has_no_qa_cells_and_no_dataset_files():
    semi, _ = csv_rows("within_model_semifrozen.csv")
    adapters, _ = csv_rows("within_model_adapters.csv")
    for dataset in DATASETS.values():
        assert not any(v for k, v in semi[dataset].items() if k.startswith("SciBERT"))
        assert not any(v for k, v in adapters[dataset].items() if k.startswith("SciBERT"))
    assert not list(QA.glob("scibert_*.yaml")) and (QA / "scibert.yaml").is_file()


def test_deberta_triviaqa_values():
    # Hard-coded in the original scripts (shared/reference/README.md), in no CSV.
    config, sources = load_config(QA / "deberta_v2_xlarge_triviaqa.yaml")
    assert (config.model, config.cut_layer, config.dataset) == ("microsoft/deberta-v2-xlarge", 6, "triviaqa")
    assert config.modes == ALL_MODES
    assert config.learning_rate["semi_frozen"] == pytest.approx(5e-6)
    assert config.learning_rate["adapters"] == config.learning_rate["adapters_full"] == pytest.approx(2e-5)
    assert sources["learning_rate"].endswith("qa/deberta_v2_xlarge_triviaqa.yaml")
    assert not list(QA.glob("deberta_v2_xlarge_squad*.yaml"))  # no SQuAD value was released


# --- CPU-sized all-MiniLM-L6-v2 ------------------------------------------------------------------

def test_minilm_cpu_files():
    lrs, _ = csv_rows("within_model_semifrozen.csv")
    config, sources = load_config(QA / "minilm_l6_squad.yaml")
    assert (config.model, config.cut_layer, config.dataset) == ("offline:all-MiniLM-L6-v2", 2, "squad")
    assert (config.max_epochs, config.patience, config.max_length, config.warmup_ratio) == (1, 1, 384, 0.1)
    assert config.seeds == [0] and config.modes == ALL_MODES
    assert config.max_examples == {"train": 10000, "dev": 1000}  # test (official dev) is whole
    row = lrs["SQuAD"]
    assert config.learning_rate["full"] == pytest.approx(float(row["MiniLM - 6L H384: Fully Finetuned"]))
    assert config.learning_rate["semi_frozen"] == pytest.approx(
        float(row["MiniLM - 6L H384: 2 Layers Frozen (33%)"]))
    assert config.learning_rate["adapters"] == config.learning_rate["adapters_full"] == pytest.approx(1e-3)
    assert sources["model"].endswith("qa/minilm_l6_cpu.yaml")
    assert sources["learning_rate"].endswith("qa/minilm_l6_cpu.yaml")
