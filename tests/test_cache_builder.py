import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from cache_builder import ActivationCache, CacheInput, build_cache, default_cache_dir
from cache_builder import build as build_module
from cache_builder.store import FORMAT_VERSION
from recycling import encoders
from recycling.errors import UserError
from tests.helpers import save_tiny_bert, write_toy_dataset
from text_classification.data import load_dataset
from text_classification.task import tokenize


@pytest.fixture
def tiny(tmp_path):
    path = save_tiny_bert(tmp_path / "model")
    model, tokenizer = encoders.load_encoder(str(path))
    data_dir = tmp_path / "data"
    write_toy_dataset(data_dir)
    dataset = load_dataset(data_dir, "toy")
    ids = {n: tokenize(tokenizer, s.texts, 64)[0] for n, s in dataset.splits.items()}
    return dict(path=str(path), model=model, tokenizer=tokenizer, dataset=dataset, ids=ids,
                inputs={n: CacheInput(rows) for n, rows in ids.items()}, root=tmp_path)


def _build(tiny, cache_dir, **kw):
    args = dict(batch_size=5, pad_id=tiny["tokenizer"].pad_token_id)
    args.update(kw)
    return build_cache(cache_dir, tiny["path"], tiny["model"], 2, tiny["inputs"], **args)


def test_cache_stores_unpadded_rows_that_reproduce_the_full_model(tiny):
    cache = _build(tiny, tiny["root"] / "c", dtype="float32")
    split = cache.split("dev")
    assert len(split) == 8
    assert split.lengths.tolist() == [len(r) for r in tiny["ids"]["dev"]]
    hidden_rows = np.load(cache.path / "dev" / "hidden.npy", mmap_mode="r")
    assert hidden_rows.shape[0] == sum(len(r) for r in tiny["ids"]["dev"])  # no padding stored
    upper = encoders.upper_part(encoders.load_encoder(tiny["path"])[0], 2).eval()
    model = tiny["model"].eval()
    for i in (0, 5):
        rows = split[i].float()
        ids = torch.tensor([tiny["ids"]["dev"][i]])
        mask = torch.ones_like(ids)
        with torch.no_grad():
            full = model(input_ids=ids, attention_mask=mask).last_hidden_state[0]
            out = encoders.run_upper(upper, rows[None], mask)[0]
        assert (full - out).abs().max().item() <= 1e-5
    assert not (cache.path / "dev" / "labels.npy").exists()  # targets come from the task, not the cache


@pytest.mark.parametrize("dtype,tol", [("float16", 2e-3), ("bfloat16", 2e-2)])
def test_half_precision_caches_round_trip(tiny, dtype, tol):
    exact = _build(tiny, tiny["root"] / "fp32", dtype="float32").split("train")
    half = _build(tiny, tiny["root"] / dtype, dtype=dtype).split("train")
    assert half.hidden.dtype == (np.float16 if dtype == "float16" else np.uint16)
    a, b = exact[3], half[3]
    assert b.dtype == (torch.float16 if dtype == "float16" else torch.bfloat16)  # upcast on the device only
    b = b.float()
    assert (a - b).abs().max().item() <= tol * max(1.0, a.abs().max().item())


def test_matching_cache_is_reused_not_rebuilt(tiny, monkeypatch):
    first = _build(tiny, tiny["root"] / "c")
    stamp = (first.path / "manifest.json").stat().st_mtime_ns
    monkeypatch.setattr(build_module, "_build_split", lambda *a, **k: pytest.fail("rebuilt"))
    again = _build(tiny, tiny["root"] / "c")
    assert (again.path / "manifest.json").stat().st_mtime_ns == stamp
    assert again.fingerprint == first.fingerprint


def test_cache_with_other_inputs_is_refused_naming_the_field(tiny):
    _build(tiny, tiny["root"] / "c")
    with pytest.raises(UserError, match=r"dtype: cache has 'float16', this run has 'float32'"):
        _build(tiny, tiny["root"] / "c", dtype="float32")
    other = dict(tiny["inputs"])
    other["train"] = CacheInput([row[:-2] + row[-1:] for row in tiny["ids"]["train"]])  # one token fewer
    with pytest.raises(UserError, match=r"inputs_sha256\.train"):
        build_cache(tiny["root"] / "c", tiny["path"], tiny["model"], 2, other)
    segments = dict(tiny["inputs"])
    segments["dev"] = CacheInput(tiny["ids"]["dev"], [[0] * (len(r) - 1) + [1] for r in tiny["ids"]["dev"]])
    with pytest.raises(UserError, match=r"inputs_sha256\.dev"):
        build_cache(tiny["root"] / "c", tiny["path"], tiny["model"], 2, segments)
    with pytest.raises(UserError, match=r"lower_weights_sha256"):
        with torch.no_grad():
            tiny["model"].encoder.layer[1].output.dense.bias += 0.1
        _build(tiny, tiny["root"] / "c")


def test_other_token_ids_get_their_own_default_folder(tiny):
    """Another text field, max length or window stride changes the ids: a new cache, not a clash."""
    shorter = {n: CacheInput([r[:5] for r in rows]) for n, rows in tiny["ids"].items()}
    a = default_cache_dir("root", "text_classification", "toy", "m", 2, "float16", tiny["inputs"])
    b = default_cache_dir("root", "text_classification", "toy", "m", 2, "float16", shorter)
    assert a != b and a.parent == b.parent
    assert a == default_cache_dir("root", "text_classification", "toy", "m", 2, "float16", dict(tiny["inputs"]))


def test_cache_of_the_earlier_format_is_refused_with_how_to_rebuild(tiny):
    cache = _build(tiny, tiny["root"] / "c")
    manifest = json.loads((cache.path / "manifest.json").read_text())
    manifest["fingerprint"]["format"] = 1
    (cache.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=f"has format 1, this version reads format {FORMAT_VERSION}.*delete"):
        _build(tiny, tiny["root"] / "c")


def test_changing_only_upper_weights_keeps_the_cache_valid(tiny):
    first = _build(tiny, tiny["root"] / "c")
    with torch.no_grad():
        tiny["model"].encoder.layer[3].output.dense.bias += 0.1  # above the cut
    assert _build(tiny, tiny["root"] / "c").fingerprint == first.fingerprint


def test_interrupted_build_leaves_no_complete_looking_cache_and_rerun_finishes(tiny, monkeypatch):
    cache_dir = tiny["root"] / "c"
    real = build_module._build_split
    calls = []

    def crash_on_second_split(partial, name, *args):
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(partial, name, *args)

    monkeypatch.setattr(build_module, "_build_split", crash_on_second_split)
    with pytest.raises(KeyboardInterrupt):
        _build(tiny, cache_dir)
    assert not cache_dir.exists()
    with pytest.raises(UserError, match="no complete cache"):
        ActivationCache(cache_dir)
    partial = cache_dir.with_name("c.partial")
    assert (partial / calls[0]).is_dir()  # the finished split is kept for the rerun

    rebuilt = []
    monkeypatch.setattr(build_module, "_build_split",
                        lambda partial, name, *a: (rebuilt.append(name), real(partial, name, *a))[1])
    cache = _build(tiny, cache_dir)
    assert not partial.exists()
    assert len(cache.split("test")) == 8
    assert len(np.load(cache.path / "train" / "offsets.npy")) == 25
    # every split's stats are recomputed, but the completed split's arrays were not rewritten
    assert (cache.path / calls[0] / "hidden.npy").exists()
    assert rebuilt == ["train", "dev", "test"]


def test_manifest_records_provenance(tiny):
    cache = _build(tiny, tiny["root"] / "c")
    m = json.loads((cache.path / "manifest.json").read_text())
    fp = m["fingerprint"]
    assert fp["model"] == tiny["path"] and fp["cut_layer"] == 2 and fp["format"] == FORMAT_VERSION
    assert fp["dtype"] == "float16" and set(fp["inputs_sha256"]) == {"train", "dev", "test"}
    assert len(fp["lower_weights_sha256"]) == 64 and fp["features"]["train"] == 24
    assert m["package_version"] and m["build_seconds"] >= 0
    assert m["splits"]["train"]["features"] == 24


def test_command_line_builds_then_reuses(tiny):
    args = [sys.executable, "-m", "cache_builder", "--dataset", "toy", "--data-dir", str(tiny["root"] / "data"),
            "--model", tiny["path"], "--cut-layer", "2", "--max-length", "64",
            "--cache-dir", str(tiny["root"] / "cli")]
    first = subprocess.run(args, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == str(tiny["root"] / "cli")
    second = subprocess.run(args, capture_output=True, text=True)
    assert "reusing cache" in second.stderr
    bad = subprocess.run(args[:-2] + ["--cache-dir", str(tiny["root"] / "cli"), "--dtype", "float32"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    # Log lines (INFO ...) may come first; the error itself is one line, the last.
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: cache at") and bad.stderr.endswith(errors[0] + "\n")
    assert "Traceback" not in bad.stderr


def test_cache_with_segment_ids_reproduces_the_full_model(tiny):
    """QA features carry token type ids (question 0, context 1): the cache must be built with them."""
    rows = tiny["ids"]["dev"]
    types = [[0] * (len(r) // 2) + [1] * (len(r) - len(r) // 2) for r in rows]
    cache = build_cache(tiny["root"] / "seg", tiny["path"], tiny["model"], 2,
                        {"dev": CacheInput(rows, types)}, dtype="float32", batch_size=3)
    upper = encoders.upper_part(encoders.load_encoder(tiny["path"])[0], 2).eval()
    for i in (0, 7):
        ids, segments = torch.tensor([rows[i]]), torch.tensor([types[i]])
        mask = torch.ones_like(ids)
        with torch.no_grad():
            full = tiny["model"].eval()(input_ids=ids, attention_mask=mask, token_type_ids=segments).last_hidden_state
            plain = tiny["model"](input_ids=ids, attention_mask=mask).last_hidden_state
            out = encoders.run_upper(upper, cache.split("dev")[i].float()[None], mask)
        assert (full - out).abs().max().item() <= 1e-5
        assert (plain - out).abs().max().item() > 1e-4  # the segments matter, so the test can fail


@pytest.mark.parametrize("codec,dim,width,storage", [("int8", None, 32, np.int8), ("pca", 8, 8, np.float16),
                                                      ("autoencoder", 8, 8, np.float16)])
def test_a_compressed_cache_stores_codes_and_decodes_them_with_its_saved_codec(tiny, codec, dim, width, storage):
    from cache_builder import codecs

    exact = _build(tiny, tiny["root"] / "fp32", dtype="float32")
    cache = _build(tiny, tiny["root"] / codec, codec=codec, codec_dim=dim)
    assert np.load(cache.path / "train" / "hidden.npy", mmap_mode="r").dtype == storage
    record = cache.manifest["codec"]
    assert (record["name"], record["dim"], record["width"]) == (codec, dim, width)
    assert cache.fingerprint["codec"]["fit"] == {"split": "train", "tokens": codecs.FIT_TOKENS, "seed": 0}
    error = record["fit_error"]  # the round trip on the rows the codec was fitted on
    assert 0 <= error["one_minus_cosine"] < error["relative_l2"] < (0.01 if codec == "int8" else 0.8)
    assert cache.label == ("int8" if codec == "int8" else f"{codec}8-float16")
    split = cache.split("train")
    assert split.codec is cache.codec and split[0].shape[1] == width
    # The toy split is smaller than FIT_TOKENS: the codec was fitted on every training row.
    reference = torch.cat([exact.split("train")[i] for i in range(len(split))])
    decoded = cache.codec.decode(torch.cat([split[i] for i in range(len(split))]))
    if codec == "int8":
        assert ((decoded - reference).abs() <= cache.codec.scale / 2 + 1e-4).all()
        assert torch.allclose(cache.codec.scale, reference.abs().amax(0) / 127)
    else:  # 8 of 32 directions: lossy, but far better than the mean alone
        error = (decoded - reference).norm(dim=-1).mean()
        assert error < 0.8 * (reference - reference.mean(0)).norm(dim=-1).mean()
    assert cache.verify() and _build(tiny, cache.path, codec=codec, codec_dim=dim).manifest == cache.manifest
    other = ("pca", 4) if codec == "int8" else (codec, 4)  # another codec, or another size, is another cache
    with pytest.raises(UserError, match=r"codec\.(name|dim): cache has"):
        _build(tiny, cache.path, codec=other[0], codec_dim=other[1])


def test_a_compressed_cache_has_its_own_default_folder_and_a_damaged_codec_file_is_caught(tiny):
    plain = default_cache_dir(tiny["root"], "tc", "toy", tiny["path"], 2, "float16", tiny["inputs"])
    spec = build_module.codec_spec("pca", 8)
    folder = default_cache_dir(tiny["root"], "tc", "toy", tiny["path"], 2, "float16", tiny["inputs"], spec)
    assert folder != plain and "-float16-pca8-" in folder.name
    cache = _build(tiny, folder, codec="pca", codec_dim=8)
    params = folder / "codec.safetensors"
    data = bytearray(params.read_bytes())
    data[-1] ^= 0xFF
    params.write_bytes(bytes(data))
    with pytest.raises(UserError, match="codec.safetensors is corrupt"):
        cache.verify()
    params.unlink()
    with pytest.raises(UserError, match="codec.safetensors is missing"):
        ActivationCache(folder)


def test_a_given_codec_encodes_other_data_exactly_as_it_encoded_the_training_data(tiny):
    cache = _build(tiny, tiny["root"] / "fitted", codec="pca", codec_dim=8)
    test_only = {"test": tiny["inputs"]["test"]}
    again = build_cache(tiny["root"] / "given", tiny["path"], tiny["model"], 2, test_only, batch_size=5,
                        pad_id=tiny["tokenizer"].pad_token_id, codec="pca", codec_dim=8, codec_given=cache.codec)
    assert "params_sha256" in again.fingerprint["codec"] and "fit" not in again.fingerprint["codec"]
    a, b = cache.split("test"), again.split("test")
    assert all(torch.equal(a[i], b[i]) for i in range(len(a)))
    with pytest.raises(UserError, match="fitted on the train split"):
        build_cache(tiny["root"] / "nofit", tiny["path"], tiny["model"], 2, test_only, codec="pca", codec_dim=8)


def test_an_interrupted_compressed_build_resumes_with_the_codec_it_saved(tiny, monkeypatch):
    from cache_builder import codecs

    cache_dir = tiny["root"] / "c"
    real = build_module._build_split

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "_build_split", crash)
    with pytest.raises(KeyboardInterrupt):
        _build(tiny, cache_dir, codec="autoencoder", codec_dim=8)
    saved = (cache_dir.with_name("c.partial") / codecs.PARAMS_FILE).read_bytes()
    monkeypatch.setattr(build_module, "_build_split", real)
    fits = []
    monkeypatch.setattr(codecs, "fit", lambda *a: fits.append(a))  # a refit would fail here
    cache = _build(tiny, cache_dir, codec="autoencoder", codec_dim=8)
    assert not fits and (cache.path / codecs.PARAMS_FILE).read_bytes() == saved
    assert cache.manifest["codec"]["fit_error"]["relative_l2"] > 0  # kept in the saved file's metadata
