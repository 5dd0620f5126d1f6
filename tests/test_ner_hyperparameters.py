"""Every NER experiment file under HyperparameterSelection/ner/ loads as an NER config; learning
rates match the original release's within_model_semifrozen.csv (and, for DeBERTa-v2-XL adapters,
the values hard-coded in the original scripts); the CPU-sized all-MiniLM-L6-v2 files are as documented."""

import re
from pathlib import Path

import pytest
import yaml

from recycling.config import load_config
from recycling.errors import UserError
from tests.test_hyperparameters import chain_sets, csv_rows

ROOT = Path(__file__).resolve().parents[1]
NER = ROOT / "HyperparameterSelection" / "ner"
YAMLS = sorted(NER.glob("*.yaml"))

DATASETS = {"bc5cdr": "bc5cdr", "jnlpba": "JNLPBA", "ncbi_disease": "NCBI-disease"}  # suffix -> folder
# base file -> (CSV column prefix, 50% cut, the other two cuts)
CSV_MODELS = {
    "roberta_large": ("RoBERTa-Large:", 12, (6, 18)),
    "scibert": ("SciBERT:", 6, (3, 9)),
    "minilmv2_h384": ("MiniLM - 6L H384:", 3, (2, 4)),
    "minilmv2_h768": ("MiniLM - 6L H768:", 3, (2, 4)),
    "distilbert": ("DistilBERT:", 3, (2, 4)),
}
EXPERIMENT = re.compile(r"^(?P<model>[a-z0-9_]+?)_(?P<data>bc5cdr|jnlpba|ncbi_disease)(_cut(?P<cut>\d+))?$")
ALL_MODES = ["full", "semi_frozen", "adapters", "adapters_full"]


def column(lrs, dataset, prefix, cut=None):
    """The CSV cell for ``prefix`` (a model) and ``cut`` layers frozen, or fully finetuned if None."""
    wanted = "Fully Finetuned" if cut is None else f"{cut} Layers Frozen"
    names = [c for c in lrs[dataset] if c.startswith(prefix) and wanted in c]
    assert len(names) == 1, (prefix, wanted, names)
    return lrs[dataset][names[0]]


def test_there_are_ner_experiment_files():
    assert len(YAMLS) > 50


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_every_ner_file_loads(path):
    assert not chain_sets(path, "pooling"), "NER uses a per-token head: no pooling key"
    if not chain_sets(path, "dataset"):
        with pytest.raises(UserError, match="missing required key"):
            load_config(path)
        return
    config, sources = load_config(path)
    assert config.task == "ner" and config.metric == "entity_f1"
    assert config.dataset in DATASETS.values() and config.model
    assert 1 <= config.cut_layer
    assert config.max_length == 256 and config.window_stride == 64
    assert sources["task"].endswith("ner/defaults.yaml")
    match = EXPERIMENT.match(path.stem)
    assert match, f"{path.name}: expected <base>_<dataset>[_cut<k>].yaml"
    assert config.dataset == DATASETS[match["data"]]
    if match["cut"]:
        assert config.cut_layer == int(match["cut"])


def test_defaults():
    data = yaml.safe_load((NER / "defaults.yaml").read_text())
    assert data["task"] == "ner" and data["metric"] == "entity_f1"
    assert (data["max_length"], data["window_stride"], data["patience"]) == (256, 64, 5)
    assert data["modes"] == ALL_MODES and data["seeds"] == [0]
    assert (data["batch_size"], data["warmup_steps"], data["max_epochs"]) == (32, 100, 10)
    assert (data["adapter_size"], data["head_dropout"], data["cache_dtype"]) == (64, 0.1, "float16")
    assert "pooling" not in data


# --- encoded values against the release CSV ----------------------------------------------------

@pytest.mark.parametrize("file, mode, dataset, header", [
    ("roberta_large_bc5cdr", "full", "bc5cdr", "RoBERTa-Large: Fully Finetuned"),
    ("roberta_large_bc5cdr_cut18", "semi_frozen", "bc5cdr", "RoBERTa-Large: 18 Layers Frozen (75%)"),
    ("roberta_large_ncbi_disease", "semi_frozen", "NCBI-disease", "RoBERTa-Large: 12 Layers Frozen (50%)"),
    ("roberta_large_jnlpba_cut6", "semi_frozen", "JNLPBA", "RoBERTa-Large: 6 Layers Frozen (25%)"),
    ("scibert_jnlpba", "semi_frozen", "JNLPBA", "SciBERT:6 Layers Frozen (50%)"),
    ("scibert_bc5cdr", "full", "bc5cdr", "SciBERT: Fully Finetuned"),
    ("scibert_ncbi_disease_cut3", "semi_frozen", "NCBI-disease", "SciBERT: 3 Layers Frozen (25%)"),
    ("minilmv2_h384_jnlpba", "full", "JNLPBA", "MiniLM - 6L H384: Fully Finetuned"),
    ("minilmv2_h768_jnlpba_cut2", "semi_frozen", "JNLPBA", "MiniLM - 6L H768: 2 Layers Frozen (33%)"),
    ("minilmv2_h768_jnlpba", "full", "JNLPBA", "MiniLM - 6L H768: Fully Finetuned"),
    ("distilbert_bc5cdr_cut2", "semi_frozen", "bc5cdr", "DistilBERT: 2 Layers Frozen (33%)"),
    ("distilbert_ncbi_disease", "full", "NCBI-disease", "DistilBERT: Fully Finetuned"),
    ("distilbert_ncbi_disease_cut4", "semi_frozen", "NCBI-disease", "DistilBERT: 4 Layers Frozen (66%)"),
])
def test_semifrozen_csv_values(file, mode, dataset, header):
    lrs, _ = csv_rows("within_model_semifrozen.csv")
    config, _ = load_config(NER / f"{file}.yaml")
    assert config.learning_rate[mode] == pytest.approx(float(lrs[dataset][header]))


@pytest.mark.parametrize("model", CSV_MODELS)
@pytest.mark.parametrize("suffix", DATASETS)
def test_every_csv_cell_has_its_file(model, suffix):
    """Each non-empty NER cell of the model is encoded: full and 50% in the dataset file, the other
    cuts in its _cut<k> files, which keep the dataset file's full learning rate."""
    lrs, _ = csv_rows("within_model_semifrozen.csv")
    prefix, half, others = CSV_MODELS[model]
    dataset = DATASETS[suffix]
    config, _ = load_config(NER / f"{model}_{suffix}.yaml")
    assert config.cut_layer == half
    assert config.modes == ["full", "semi_frozen"]  # no NER adapter values for these models
    assert config.learning_rate["full"] == pytest.approx(float(column(lrs, dataset, prefix)))
    assert config.learning_rate["semi_frozen"] == pytest.approx(float(column(lrs, dataset, prefix, half)))
    for cut in others:
        cell = column(lrs, dataset, prefix, cut)
        path = NER / f"{model}_{suffix}_cut{cut}.yaml"
        assert path.is_file() == bool(cell), path.name
        if cell:
            variant, sources = load_config(path)
            assert variant.cut_layer == cut and variant.modes == ["full", "semi_frozen"]
            assert variant.learning_rate["semi_frozen"] == pytest.approx(float(cell))
            assert variant.learning_rate["full"] == config.learning_rate["full"]
            assert sources["model"].endswith(f"ner/{model}.yaml")


def test_bert_has_no_ner_cells_and_no_dataset_files():
    lrs, _ = csv_rows("within_model_semifrozen.csv")
    for dataset in DATASETS.values():
        assert not any(v for k, v in lrs[dataset].items() if k.startswith("BERT"))
    assert not list(NER.glob("bert_base_*.yaml"))
    assert (NER / "bert_base.yaml").is_file()


@pytest.mark.parametrize("suffix, dataset, lr", [
    ("bc5cdr", "bc5cdr", 5e-6), ("jnlpba", "JNLPBA", 5e-6), ("ncbi_disease", "NCBI-disease", 5e-5),
])
def test_deberta_adapter_values(suffix, dataset, lr):
    # Hard-coded in the original scripts (shared/reference/README.md), in no CSV.
    config, _ = load_config(NER / f"deberta_v2_xlarge_{suffix}.yaml")
    assert (config.model, config.cut_layer, config.dataset) == ("microsoft/deberta-v2-xlarge", 12, dataset)
    assert config.modes == ALL_MODES
    assert config.learning_rate["adapters"] == config.learning_rate["adapters_full"] == pytest.approx(lr)
    assert config.adapter_size == 256


# --- CPU-sized all-MiniLM-L6-v2 ----------------------------------------------------------------

@pytest.mark.parametrize("file, dataset, seeds", [
    ("minilm_l6_bc5cdr", "bc5cdr", [0, 1, 2]),
    ("minilm_l6_ncbi_disease", "NCBI-disease", [0]),
])
def test_minilm_cpu_files(file, dataset, seeds):
    lrs, _ = csv_rows("within_model_semifrozen.csv")
    config, sources = load_config(NER / f"{file}.yaml")
    assert (config.model, config.cut_layer, config.dataset) == ("offline:all-MiniLM-L6-v2", 3, dataset)
    assert (config.max_epochs, config.patience, config.max_length) == (3, 2, 256)
    assert config.seeds == seeds and config.modes == ALL_MODES
    assert config.learning_rate["full"] == pytest.approx(float(lrs[dataset]["MiniLM - 6L H384: Fully Finetuned"]))
    assert config.learning_rate["semi_frozen"] == pytest.approx(
        float(lrs[dataset]["MiniLM - 6L H384: 3 Layers Frozen (50%)"]))
    assert config.learning_rate["adapters"] == config.learning_rate["adapters_full"] == pytest.approx(1e-3)
    assert sources["model"].endswith("ner/minilm_l6_cpu.yaml")
    assert sources["learning_rate"].endswith(f"ner/{file}.yaml")
