"""The Cosmos CI8x8-style autoencoder and the range codec."""

import pytest
import torch

from toolkit.tasks.lidar_tokenizer.autoencoder import (PRESETS, AutoencoderConfig, CosmosAutoencoder, HaarPatcher, HaarUnpatcher,
                                                       _haar_filters)
from toolkit.tasks.lidar_tokenizer import LidarTokenizerConfig, RangeCodec
from toolkit.tasks.lidar_tokenizer.model import fill_invalid_rowwise


def test_haar_packet_is_orthonormal_and_invertible():
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    p, u = HaarPatcher(2).double(), HaarUnpatcher(2).double()
    z = p(x)
    assert z.shape == (2, 48, 4, 6)
    assert torch.allclose(u(z), x, atol=1e-12)
    assert torch.allclose(z.pow(2).sum(), x.pow(2).sum())  # energy preserved


def test_haar_patcher_equals_the_grouped_haar_convolution_in_either_memory_layout():
    """The element-wise Haar transform (no convolution: see _haar_mix) equals a stride-2 grouped conv2d
    with the four Haar filters, level by level, for contiguous and channels-last input alike."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 32, dtype=torch.float64)
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        ref = inp
        for _ in range(2):
            c = ref.shape[1]
            ref = torch.nn.functional.conv2d(ref, _haar_filters().double().repeat(c, 1, 1, 1), stride=2, groups=c)
        torch.testing.assert_close(HaarPatcher(2)(inp), ref, rtol=0, atol=1e-12)


def test_shapes_8x8_compression():
    m = CosmosAutoencoder(AutoencoderConfig(in_channels=1, latent_channels=16, **PRESETS["tiny"]))
    recon, z = m(torch.randn(2, 1, 32, 256))
    assert z.shape == (2, 16, 4, 32) and recon.shape == (2, 1, 32, 256)


def test_cosmos_preset_matches_the_published_size():
    m = CosmosAutoencoder(AutoencoderConfig(in_channels=3, latent_channels=16, **PRESETS["cosmos"]))
    n_enc = sum(p.numel() for p in m.encoder.parameters())
    n_all = sum(p.numel() for p in m.parameters())
    # notes: encoder ~31.15M, total ~76.8M (counted from the Cosmos config)
    assert n_enc == pytest.approx(31.15e6, rel=0.01) and n_all == pytest.approx(76.8e6, rel=0.01)


def test_compression_ratio_of_the_demo_config():
    cfg = LidarTokenizerConfig(latent_channels=15)
    assert cfg.compression() == pytest.approx(32 * 1084 / (15 * 4 * 136)) and cfg.compression() >= 4
    assert LidarTokenizerConfig(latent_channels=16, row_repeat=4).compression() < 1.0  # Cosmos row repeat


def test_row_fill_uses_nearest_valid_neighbours():
    x = torch.tensor([[[[0.0, 5.0, 0.0, 0.0, 9.0, 0.0]]]])
    filled = fill_invalid_rowwise(x, x > 0, fallback=100.0)
    assert filled.tolist() == [[[[5.0, 5.0, 5.0, 5.0, 9.0, 9.0]]]]
    empty = torch.zeros(1, 1, 1, 4)
    assert fill_invalid_rowwise(empty, empty > 0, 100.0).eq(100.0).all()


@pytest.mark.parametrize("normalization", ["linear", "log"])
def test_codec_round_trip(normalization):
    codec = RangeCodec(1.0, 100.0, normalization, "nearest", row_repeat=4)
    r = torch.rand(2, 1, 32, 1084) * 98 + 1.5
    v = codec.normalize(r)
    assert v.shape == (2, 1, 128, 1088) and v.abs().max() <= 1.0 + 1e-6
    assert torch.allclose(codec.denormalize(v, 1084), r, rtol=1e-4, atol=1e-3)
