"""Every experiment file under HyperparameterSelection/ loads; values match the original CSVs;
the config machinery (base chains, merging, --set, errors) behaves as documented."""

import csv
from pathlib import Path

import pytest
import yaml

from recycling.config import load_config
from recycling.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
HP = ROOT / "HyperparameterSelection"
TC = HP / "text_classification"
YAMLS = sorted(HP.rglob("*.yaml"))
CSV_DIRS = [ROOT / "shared" / "reference" / "hyperparameters",
            ROOT.parent / "shared" / "reference" / "hyperparameters"]


def chain_sets(path: Path, key: str) -> bool:
    """Whether ``path`` or a file it extends sets ``key``."""
    data = yaml.safe_load(path.read_text()) or {}
    if key in data:
        return True
    return "base" in data and chain_sets(path.parent / data["base"], key)


def test_there_are_experiment_files():
    assert len(YAMLS) > 40


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(HP)))
def test_every_file_loads(path):
    if chain_sets(path, "dataset"):
        config, _ = load_config(path)
        assert config.dataset and config.model
        assert 1 <= config.cut_layer
    else:
        with pytest.raises(UserError, match="missing required key"):
            load_config(path)


# --- encoded values against the release CSVs -------------------------------------------------

def csv_rows(name):
    """{dataset: {column header: cell}} for learning rates, and the same for bottleneck rows."""
    folder = next((d for d in CSV_DIRS if (d / name).is_file()), None)
    if folder is None:
        pytest.skip(f"{name} not found in {CSV_DIRS}")
    rows = list(csv.reader((folder / name).open()))
    header, lrs, bottlenecks, current = rows[0], {}, {}, None
    for row in rows[1:]:
        current = row[0] or current
        target = bottlenecks if row[1] == "Bottleneck Dimension" else lrs
        target[current] = dict(zip(header, row))
    return lrs, bottlenecks


@pytest.mark.parametrize("file, mode, dataset, column", [
    ("roberta_large_chemprot", "semi_frozen", "ChemProt", "RoBERTa-Large: 12 Layers Frozen (50%)"),
    ("roberta_large_chemprot", "full", "ChemProt", "RoBERTa-Large: Fully Finetuned"),
    ("roberta_large_chemprot_cut6", "semi_frozen", "ChemProt", "RoBERTa-Large: 6 Layers Frozen (25%)"),
    ("scibert_sciie", "semi_frozen", "SciERC-Rel", "SciBERT:6 Layers Frozen (50%)"),
    ("scibert_scicite_cut9", "semi_frozen", "SciCite", "SciBERT:9 Layers Frozen (75%)"),
    ("minilmv2_h384_scicite", "full", "SciCite", "MiniLM - 6L H384: Fully Finetuned"),
    ("minilmv2_h768_sciie_cut4", "semi_frozen", "SciERC-Rel", "MiniLM - 6L H768: 4 Layers Frozen (66%)"),
    ("distilbert_chemprot_cut4", "semi_frozen", "ChemProt", "DistilBERT: 4 Layers Frozen (66%)"),
])
def test_semifrozen_csv_values(file, mode, dataset, column):
    lrs, _ = csv_rows("within_model_semifrozen.csv")
    config, _ = load_config(TC / f"{file}.yaml")
    assert config.learning_rate[mode] == pytest.approx(float(lrs[dataset][column]))


@pytest.mark.parametrize("file, dataset, column", [
    ("roberta_large_chemprot", "ChemProt", "RoBERTa frozen + Unfrozen Adapters on later 12 layers + Unfrozen Classifier"),
    ("roberta_large_scicite", "SciCite", "RoBERTa frozen + Unfrozen Adapters on later 12 layers + Unfrozen Classifier"),
    ("scibert_sciie", "SciERC-Rel", "SciBERT frozen + Unfrozen Adapters on later 6 layers + Unfrozen Classifier"),
])
def test_adapter_csv_values(file, dataset, column):
    lrs, bottlenecks = csv_rows("within_model_adapters.csv")
    config, _ = load_config(TC / f"{file}.yaml")
    assert config.learning_rate["adapters"] == pytest.approx(float(lrs[dataset][column]))
    assert config.learning_rate["adapters_full"] == config.learning_rate["adapters"]
    assert config.adapter_size == int(float(bottlenecks[dataset][column]))


def test_models_without_adapter_values_skip_adapter_modes():
    for name in ("minilmv2_h384_chemprot", "minilmv2_h768_sciie_cut2", "distilbert_scicite",
                 "roberta_large_chemprot_cut18"):
        config, _ = load_config(TC / f"{name}.yaml")
        assert config.modes == ["full", "semi_frozen"], name


def test_cut_override_keeps_other_values():
    half, _ = load_config(TC / "roberta_large_chemprot.yaml")
    cut, sources = load_config(TC / "roberta_large_chemprot_cut6.yaml")
    assert (half.cut_layer, cut.cut_layer) == (12, 6)
    assert cut.learning_rate["full"] == half.learning_rate["full"]
    assert sources["learning_rate"].endswith("roberta_large_chemprot_cut6.yaml")
    assert sources["model"].endswith("roberta_large.yaml")


# --- the config machinery ----------------------------------------------------------------------

@pytest.fixture
def base(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text("dataset: d\nmodel: m\ncut_layer: 2\n"
                    "learning_rate: {full: 1.0e-5, semi_frozen: 2.0e-5, adapters: 1.0e-4, adapters_full: 1.0e-4}\n")
    return path


def child(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text("base: base.yaml\n" + text)
    return path


def test_unknown_key_names_key_and_file(tmp_path, base):
    path = child(tmp_path, "lerning_rate: {full: 1.0e-3}\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert "lerning_rate" in str(err.value) and str(path) in str(err.value)
    assert "did you mean 'learning_rate'" in str(err.value)


def test_wrong_type_names_key_and_file(tmp_path, base):
    path = child(tmp_path, "batch_size: eight\n")
    with pytest.raises(UserError, match="batch_size") as err:
        load_config(path)
    assert str(path) in str(err.value)
    with pytest.raises(UserError, match="--set: key 'max_epochs'"):
        load_config(base, ["max_epochs=2.5"])


def test_set_overrides_file_values(tmp_path, base):
    config, sources = load_config(child(tmp_path, "batch_size: 16\n"), ["batch_size=8", "seeds=[1, 2]"])
    assert config.batch_size == 8 and config.seeds == [1, 2]
    assert sources["batch_size"] == "--set"
    with pytest.raises(UserError, match="key=value"):
        load_config(base, ["batch_size"])


def test_learning_rate_mapping_merges(tmp_path, base):
    config, sources = load_config(child(tmp_path, "learning_rate: {full: 3.0e-5}\n"),
                                  ["learning_rate={adapters: 5.0e-4}"])
    assert config.learning_rate == {"full": 3e-5, "semi_frozen": 2e-5, "adapters": 5e-4, "adapters_full": 1e-4}
    assert sources["learning_rate"] == "--set"


def test_unknown_mode_in_modes(tmp_path, base):
    path = child(tmp_path, "modes: [full, fast]\n")
    with pytest.raises(UserError, match="unknown mode 'fast'") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_unknown_mode_in_learning_rate(tmp_path, base):
    with pytest.raises(UserError, match="unknown mode 'semi'"):
        load_config(child(tmp_path, "learning_rate: {semi: 1.0e-5}\n"))


def test_missing_required_key_and_base_loop(tmp_path):
    (tmp_path / "a.yaml").write_text("model: m\n")
    with pytest.raises(UserError, match="missing required key.*dataset"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("base: c.yaml\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\n")
    with pytest.raises(UserError, match="loops back"):
        load_config(tmp_path / "b.yaml")


def test_cross_model_files_carry_the_cross_model_table():
    """cross_model_semifrozen.csv: per dataset, the source -> consumer rate and the consumer's own."""
    folder = next((d for d in CSV_DIRS if (d / "cross_model_semifrozen.csv").is_file()), None)
    if folder is None:
        pytest.skip("cross_model_semifrozen.csv not found")
    rows = list(csv.reader((folder / "cross_model_semifrozen.csv").open()))
    assert rows[0][2:] == ["RoBERTa-Large", "MiniLM L6-H768", "BERT", "DistilBERT"]
    assert rows[1][2:] == ["MiniLM L6-H768", "", "DistilBERT", ""]
    files = {"ChemProt": "chemprot", "SciCite": "scicite", "SciERC-Rel": "sciie"}
    for row in rows[2:]:
        cross_large, alone_minilm, cross_bert, alone_distilbert = (float(v) for v in row[2:6])
        name = files[row[0]]
        large, _ = load_config(TC / "cross_model" / f"roberta_large_to_minilmv2_h768_{name}.yaml")
        bert, _ = load_config(TC / "cross_model" / f"bert_base_to_distilbert_{name}.yaml")
        assert (large.source_model, large.model) == ("roberta-large",
                                                     "nreimers/MiniLMv2-L6-H768-distilled-from-RoBERTa-Large")
        assert (bert.source_model, bert.model) == ("bert-base-uncased", "distilbert-base-uncased")
        assert large.learning_rate["cross_model"] == cross_large and large.learning_rate["full"] == alone_minilm
        assert bert.learning_rate["cross_model"] == cross_bert and bert.learning_rate["full"] == alone_distilbert
        assert large.modes == bert.modes == ["full", "cross_model"]
