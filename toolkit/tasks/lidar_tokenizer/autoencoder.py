"""A Cosmos CI8x8-style continuous image autoencoder, re-implemented from its published description.

Architecture (NVIDIA Cosmos Tokenizer, ``ContinuousImageTokenizer``; facts in
``shared/notes/lidar-tokenizer.md`` section 2):

* a 2-level 2-D Haar wavelet packet transform (patch size 4): (B, C, H, W) -> (B, 16 C, H/4, W/4),
  orthonormal, so lossless and exactly invertible;
* encoder: conv3x3 -> per level ``num_res_blocks`` ResBlocks (GroupNorm, SiLU, conv3x3, twice, with a
  residual), one stride-2 downsample after the first level (pad right/bottom, conv3x3 stride 2), a mid
  block (ResBlock, single-head self-attention over all H/8 x W/8 tokens, ResBlock), GroupNorm, SiLU,
  conv3x3 to ``z_channels`` and a 1x1 ``quant_conv`` to ``latent_channels``;
* decoder: the mirror (1x1 ``post_quant_conv``, conv3x3, mid block, ``num_res_blocks + 1`` ResBlocks
  per level, one nearest x2 upsample + conv3x3, GroupNorm, SiLU, conv3x3) and the inverse Haar.

It is a plain autoencoder (no KL, no quantisation): total spatial compression 8 x 8 of the input,
``latent_channels`` values per 8 x 8 block. All modules are TorchScript-scriptable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AutoencoderConfig", "CosmosAutoencoder", "Encoder", "Decoder", "HaarPatcher", "HaarUnpatcher", "PRESETS"]


@dataclass
class AutoencoderConfig:
    """Width and depth of :class:`CosmosAutoencoder`.

    Attributes:
        in_channels: image channels (1 for a range map).
        channels: base width after the stem conv.
        channel_mult: width multiplier of each level (level 0 is followed by the one downsample).
        num_res_blocks: ResBlocks per encoder level (the decoder uses one more).
        z_channels: width of the bottleneck conv before ``quant_conv``.
        latent_channels: channels of the latent (16 in Cosmos CI8x8).
        patch_levels: Haar levels (2 = patch size 4).
        num_groups: GroupNorm groups (clamped to a divisor of each width).
        dropout: ResBlock dropout.
    """

    in_channels: int = 1
    channels: int = 128
    channel_mult: list[int] = field(default_factory=lambda: [2, 4, 4])
    num_res_blocks: int = 2
    z_channels: int = 16
    latent_channels: int = 16
    patch_levels: int = 2
    num_groups: int = 32
    dropout: float = 0.0

    @property
    def spatial_compression(self) -> int:
        return 2 ** self.patch_levels * 2


#: Size presets. ``cosmos``: the CI8x8 width (128, mult [2, 4, 4], 2 ResBlocks; ~77M parameters with
#: 3 input channels), for GPUs. ``tiny``: a CPU-sized model for tests and the demo.
PRESETS: dict[str, dict] = {
    "cosmos": dict(channels=128, channel_mult=[2, 4, 4], num_res_blocks=2, num_groups=32),
    "small": dict(channels=64, channel_mult=[1, 2, 2], num_res_blocks=2, num_groups=16),
    "tiny": dict(channels=32, channel_mult=[1, 2, 2], num_res_blocks=1, num_groups=8),
}


def _groups(channels: int, wanted: int) -> int:
    g = min(wanted, channels)
    while channels % g:
        g -= 1
    return g


def _haar_filters() -> torch.Tensor:
    """(4, 1, 2, 2) orthonormal 2-D Haar analysis filters: LL, LH, HL, HH (rows: top, bottom; columns: left, right)."""
    h = torch.tensor([
        [[1.0, 1.0], [1.0, 1.0]],
        [[1.0, -1.0], [1.0, -1.0]],
        [[1.0, 1.0], [-1.0, -1.0]],
        [[1.0, -1.0], [-1.0, 1.0]],
    ]) / 2.0
    return h[:, None]


def _haar_mix(x: torch.Tensor) -> torch.Tensor:
    """The 4 x 4 Haar butterfly on each group of 4 channels: (B, 4C, H, W) -> (B, 4C, H, W), same dtype,
    channels-last.

    After ``pixel_unshuffle(x, 2)`` the group of an input channel holds its 2 x 2 block's pixels
    (top-left a, top-right b, bottom-left c, bottom-right d); this returns (LL, LH, HL, HH) =
    ((a+b+c+d), (a-b+c-d), (a+b-c-d), (a-b-c+d)) / 2, which equals a stride-2 grouped convolution with
    :func:`_haar_filters`. The matrix is symmetric and orthonormal, so the same call inverts it (before
    ``pixel_shuffle``). Element-wise, not a convolution: a 1-channel input is both contiguous and channels-last,
    and cuDNN's choice of output layout for it differs from the one ``torch.compile`` predicts (inductor's
    stride assertion failed on an H200, docs/gpu.md).
    """
    a, b, c, d = x.unflatten(1, (-1, 4)).unbind(2)
    s, t = a + b, a - b
    u, v = c + d, c - d
    out = torch.stack(((s + u), (t + v), (s - u), (t - v)), dim=2).flatten(1, 2) * 0.5
    return out.contiguous(memory_format=torch.channels_last)  # the model's layout (and the convolution's before)


class HaarPatcher(nn.Module):
    """``levels`` rounds of the 2-D Haar transform on every channel: (B, C, H, W) -> (B, C 4^L, H/2^L, W/2^L).

    H and W must be divisible by 2^L.
    """

    def __init__(self, levels: int = 2):
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.levels):
            x = _haar_mix(F.pixel_unshuffle(x, 2))
        return x


class HaarUnpatcher(nn.Module):
    """Exact inverse of :class:`HaarPatcher`."""

    def __init__(self, levels: int = 2):
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.levels):
            x = F.pixel_shuffle(_haar_mix(x), 2)
        return x


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 -> GroupNorm -> SiLU -> dropout -> conv3x3, plus a (1x1) skip."""

    def __init__(self, cin: int, cout: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin, groups), cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(cout, groups), cout, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H x W positions (the Cosmos/VQGAN mid block)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels, groups), channels, eps=1e-6)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Pad right and bottom by one, then conv3x3 with stride 2 (as Cosmos)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2, then conv3x3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, channels: int, groups: int, dropout: float):
        super().__init__()
        self.block1 = ResBlock(channels, channels, groups, dropout)
        self.attn = AttnBlock(channels, groups)
        self.block2 = ResBlock(channels, channels, groups, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.attn(self.block1(x)))


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> latent (B, latent_channels, H/8, W/8); H, W divisible by 8."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        g = cfg.num_groups
        self.patcher = HaarPatcher(cfg.patch_levels)
        cin = cfg.in_channels * 4 ** cfg.patch_levels
        self.stem = nn.Conv2d(cin, cfg.channels, 3, padding=1)
        blocks: list[nn.Module] = []
        width = cfg.channels
        for level, mult in enumerate(cfg.channel_mult):
            out = cfg.channels * mult
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(width, out, g, cfg.dropout))
                width = out
            if level == 0:
                blocks.append(Downsample(width))
        self.blocks = nn.Sequential(*blocks)
        self.mid = _Mid(width, g, cfg.dropout)
        self.norm_out = nn.GroupNorm(_groups(width, g), width, eps=1e-6)
        self.conv_out = nn.Conv2d(width, cfg.z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.latent_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.blocks(self.stem(self.patcher(x))))
        return self.quant_conv(self.conv_out(F.silu(self.norm_out(h))))


class Decoder(nn.Module):
    """Latent (B, latent_channels, h, w) -> image (B, in_channels, 8h, 8w)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        g = cfg.num_groups
        widths = [cfg.channels * m for m in cfg.channel_mult]
        width = widths[-1]
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.z_channels, 1)
        self.stem = nn.Conv2d(cfg.z_channels, width, 3, padding=1)
        self.mid = _Mid(width, g, cfg.dropout)
        blocks: list[nn.Module] = []
        for level in reversed(range(len(widths))):
            out = widths[level]
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(width, out, g, cfg.dropout))
                width = out
            if level == len(widths) - 1:  # Cosmos: the one upsample follows the deepest level
                blocks.append(Upsample(width))
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = nn.GroupNorm(_groups(width, g), width, eps=1e-6)
        self.conv_out = nn.Conv2d(width, cfg.in_channels * 4 ** cfg.patch_levels, 3, padding=1)
        self.unpatcher = HaarUnpatcher(cfg.patch_levels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.mid(self.stem(self.post_quant_conv(z))))
        return self.unpatcher(self.conv_out(F.silu(self.norm_out(h))))


class CosmosAutoencoder(nn.Module):
    """Encoder + decoder; ``forward(x)`` returns ``(reconstruction, latent)``."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return self.decoder(z), z
