"""Range-map autoencoder: metres in, metres out, around :class:`CosmosAutoencoder`.

Pre-processing (all TorchScript-scriptable, so the JIT exports take and return metres):

1. invalid pixels (range outside [min_range_m, max_range_m]: no return, ego roof) are filled, by default
   with the nearest valid value along the row (``fill="nearest"``), so the autoencoder spends no
   capacity on the sensor's holes; ``"max"``/``"min"`` fill with the interval's ends instead;
2. ranges are clipped to [min_range_m, max_range_m] and scaled to [-1, 1], linearly
   (Cosmos: ``v = 2 (r - min) / (max - min) - 1``) or in log range (``normalization="log"``);
3. rows are repeated ``row_repeat`` times (Cosmos repeats its 128 rows 4x; 1 keeps the native rows);
4. the width is padded circularly to a multiple of 8 (a sweep wraps around in azimuth).

Post-processing undoes 4, 3 (mean over repeated rows) and 2 (clamped to the interval).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .autoencoder import AutoencoderConfig, CosmosAutoencoder


def fill_invalid_rowwise(x: torch.Tensor, valid: torch.Tensor, fallback: float) -> torch.Tensor:
    """Replace invalid pixels by the nearest valid one to their left (else to their right) in the row.

    Args:
        x: (B, C, H, W) float; valid: (B, C, H, W) bool; fallback: value for rows with no valid pixel.

    Returns:
        (B, C, H, W) float, equal to ``x`` where valid.
    """
    w = x.shape[-1]
    cols = torch.arange(w, device=x.device).expand(x.shape)
    left = torch.where(valid, cols, torch.zeros_like(cols)).cummax(-1).values
    right = torch.where(valid, cols, torch.full_like(cols, w - 1)).flip(-1).cummin(-1).values.flip(-1)
    seen_left = valid.cumsum(-1) > 0
    filled = torch.where(seen_left, torch.gather(x, -1, left), torch.gather(x, -1, right))
    filled = torch.where(valid, x, filled)
    any_valid = valid.any(dim=-1, keepdim=True)
    return torch.where(any_valid, filled, torch.full_like(x, fallback))


class RangeCodec(nn.Module):
    """Normalisation and layout of range maps for the autoencoder (see module docstring).

    Args:
        min_range_m, max_range_m: valid interval, m.
        normalization: ``"linear"`` or ``"log"``.
        fill: ``"nearest"``, ``"max"`` or ``"min"``.
        row_repeat: rows repeated this many times (1 = native).
    """

    def __init__(self, min_range_m: float, max_range_m: float, normalization: str = "linear",
                 fill: str = "nearest", row_repeat: int = 1):
        super().__init__()
        self.min_range = float(min_range_m)
        self.max_range = float(max_range_m)
        self.log_scale = normalization == "log"
        self.fill = fill
        self.row_repeat = int(row_repeat)
        self.log_min = math.log(self.min_range)
        self.log_max = math.log(self.max_range)

    def valid(self, range_m: torch.Tensor) -> torch.Tensor:
        return (range_m >= self.min_range) & (range_m <= self.max_range)

    def normalize(self, range_m: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) metres -> (B, 1, H * row_repeat, ceil8(W)) in [-1, 1]."""
        valid = self.valid(range_m)
        if self.fill == "nearest":
            r = fill_invalid_rowwise(range_m, valid, self.max_range)
        elif self.fill == "min":
            r = torch.where(valid, range_m, torch.full_like(range_m, self.min_range))
        else:
            r = torch.where(valid, range_m, torch.full_like(range_m, self.max_range))
        r = r.clamp(self.min_range, self.max_range)
        if self.log_scale:
            v = 2.0 * (torch.log(r) - self.log_min) / (self.log_max - self.log_min) - 1.0
        else:
            v = 2.0 * (r - self.min_range) / (self.max_range - self.min_range) - 1.0
        return self.layout(v)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """Row repeat and circular width padding to a multiple of 8 (for values or masks as float)."""
        if self.row_repeat > 1:
            x = x.repeat_interleave(self.row_repeat, dim=2)
        pad = (8 - x.shape[-1] % 8) % 8
        if pad:
            x = F.pad(x, [0, pad, 0, 0], mode="circular")
        return x

    def denormalize(self, v: torch.Tensor, width: int) -> torch.Tensor:
        """(B, 1, H * row_repeat, W') model output -> (B, 1, H, width) metres (``width`` <= W')."""
        if self.row_repeat > 1:
            b, c, h, w = v.shape
            v = v.reshape(b, c, h // self.row_repeat, self.row_repeat, w).mean(dim=3)
        v = v[..., :width].clamp(-1.0, 1.0)
        if self.log_scale:
            return torch.exp((v + 1.0) * 0.5 * (self.log_max - self.log_min) + self.log_min)
        return (v + 1.0) * 0.5 * (self.max_range - self.min_range) + self.min_range


class RangeTokenizer(nn.Module):
    """The trained model: codec + Cosmos-style autoencoder.

    ``forward(range_m)`` with (B, 1, H, W) metres returns a dict: ``recon`` and ``target`` (normalised,
    model layout), ``valid`` (same layout, float 0/1) and ``latent`` (B, latent_channels, H*rr/8, ceil(W/8)).
    """

    def __init__(self, ae_cfg: AutoencoderConfig, codec: RangeCodec):
        super().__init__()
        self.codec = codec
        self.autoencoder = CosmosAutoencoder(ae_cfg)

    def forward(self, range_m: torch.Tensor) -> dict[str, torch.Tensor]:
        target = self.codec.normalize(range_m)
        valid = self.codec.layout(self.codec.valid(range_m).to(target.dtype))
        recon, latent = self.autoencoder(target.contiguous(memory_format=torch.channels_last))
        return {"recon": recon, "target": target, "valid": valid, "latent": latent}

    def reconstruct(self, range_m: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) metres -> reconstructed (B, 1, H, W) metres."""
        recon, _ = self.autoencoder(self.codec.normalize(range_m))
        return self.codec.denormalize(recon, range_m.shape[-1])


class RangeEncoder(nn.Module):
    """Export ``enc``: (B, 1, H, W) range in metres (0 = no return) -> latent (B, C, H*rr/8, ceil(W/8))."""

    def __init__(self, model: RangeTokenizer):
        super().__init__()
        self.codec = model.codec
        self.encoder = model.autoencoder.encoder

    def forward(self, range_m: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.codec.normalize(range_m))


class RangeDecoder(nn.Module):
    """Export ``dec``: latent (B, C, h, w) -> range in metres (B, 1, 8h / row_repeat, 8w).

    The width is the padded one (a multiple of 8): crop to the input's width.
    """

    def __init__(self, model: RangeTokenizer):
        super().__init__()
        self.codec = model.codec
        self.decoder = model.autoencoder.decoder

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        recon = self.decoder(latent)
        return self.codec.denormalize(recon, recon.shape[-1])


class RangeAutoencoderExport(nn.Module):
    """Export ``ema``: (B, 1, H, W) metres -> reconstructed (B, 1, H, W) metres."""

    def __init__(self, model: RangeTokenizer):
        super().__init__()
        self.codec = model.codec
        self.encoder = model.autoencoder.encoder
        self.decoder = model.autoencoder.decoder

    def forward(self, range_m: torch.Tensor) -> torch.Tensor:
        recon = self.decoder(self.encoder(self.codec.normalize(range_m)))
        return self.codec.denormalize(recon, range_m.shape[-1])
