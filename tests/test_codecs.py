"""Compressed-cache codecs: what each keeps of a row, and that a refit gives the same codes."""

import pytest
import torch

from cache_builder import codecs


def _rows(n=2000, width=32, seed=0):
    """Rows like a layer's output: a shared offset, uneven channel scales and one outlier channel."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, width, generator=g) * torch.linspace(0.2, 2.0, width) + 0.5
    rows[:, 3] *= 8  # the outlier channel
    return rows


def test_int8_scales_each_channel_by_its_own_range():
    rows = _rows()
    codec = codecs.fit("int8", rows, None)
    assert codec.width == 32
    assert torch.allclose(codec.scale, rows.abs().amax(0) / 127)
    codes = codec.encode(rows)
    assert codes.dtype == torch.int8 and codes.abs().max() == 127
    # Rounding error is at most half a step of the row's own channel, not of the outlier channel.
    assert ((codec.decode(codes) - rows).abs() <= codec.scale / 2 + 1e-6).all()
    assert codec.scale[0] < codec.scale[3] / 10


def test_int8_clips_values_beyond_the_fitted_range():
    codec = codecs.fit("int8", _rows(), None)
    beyond = codec.scale * 127 * 3
    assert torch.allclose(codec.decode(codec.encode(beyond[None])), codec.scale * 127)


def test_pca_keeps_data_of_lower_rank_exactly_and_full_width_is_lossless():
    g = torch.Generator().manual_seed(1)
    low_rank = torch.randn(500, 6, generator=g) @ torch.randn(6, 32, generator=g) + 1.0
    codec = codecs.fit("pca", low_rank, 6)
    assert codec.width == 6 and codec.encode(low_rank).shape == (500, 6)
    assert torch.allclose(codec.decode(codec.encode(low_rank)), low_rank, atol=1e-4)
    rows = _rows()
    full = codecs.fit("pca", rows, 32)
    assert torch.allclose(full.decode(full.encode(rows)), rows, atol=1e-4)


def test_pca_keeps_the_largest_variance_first_and_refits_to_the_same_codes():
    rows = _rows()
    codec = codecs.fit("pca", rows, 8)
    codes = codec.encode(rows)
    variances = codes.var(0)
    assert (variances[:-1] >= variances[1:] - 1e-4).all()
    assert variances[0] == pytest.approx(rows[:, 3].var().item(), rel=0.05)  # the outlier channel's direction
    assert torch.equal(codecs.fit("pca", rows, 8).encode(rows), codes)


def _cosine_error(codec, rows):
    out = codec.decode(codec.encode(rows))
    return (1 - torch.nn.functional.cosine_similarity(out, rows, dim=-1)).mean().item()


def test_the_autoencoder_starts_at_pca_and_ends_closer_in_direction():
    rows = _rows()
    pca = codecs.fit("pca", rows, 4)
    autoencoder = codecs.fit("autoencoder", rows, 4)
    assert autoencoder.width == 4
    assert _cosine_error(autoencoder, rows) < _cosine_error(pca, rows)  # trained on direction, from PCA
    again = codecs.fit("autoencoder", rows, 4)  # seeded: a refit is the same codec
    assert all(torch.equal(a, b) for a, b in zip(autoencoder.tensors().values(), again.tensors().values()))


@pytest.mark.parametrize("name,dim", [("int8", None), ("pca", 8), ("autoencoder", 8)])
def test_a_codec_is_rebuilt_from_its_tensors(name, dim):
    rows = _rows(n=300)
    codec = codecs.fit(name, rows, dim)
    copy = codecs.load(name, codec.tensors())
    assert torch.equal(copy.decode(copy.encode(rows)), codec.decode(codec.encode(rows)))
    assert codec.state_dict() == {}  # the tensors travel in the cache, not in a model's weights


@pytest.mark.parametrize("dim", [None, 0, 33])
def test_a_dimension_outside_the_width_is_refused(dim):
    with pytest.raises(ValueError, match="needs 0 < dim <= 32"):
        codecs.fit("pca", _rows(n=100), dim)
