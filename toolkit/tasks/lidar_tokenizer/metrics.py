"""Reconstruction metrics of range maps in metres, and the trivial downsampling baseline.

Definitions (Cosmos LiDAR tokenizer ``lidar_cli``; ``shared/notes/lidar-tokenizer.md`` section 4), over
valid pixels (input range inside [min_range_m, max_range_m]) pooled across all frames:
``d = r_hat - r``, RMSE = sqrt(mean d^2), MAE = mean |d|, relative error = mean(|d| / (r + 1e-6)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class RangeErrorSums:
    """Running sums for pooled metrics; add frames with :meth:`update`, read with :meth:`result`.

    Attributes:
        sq, abs, rel: sums of d^2 (m^2), |d| (m) and |d| / r over valid pixels (float64 accumulators).
        pixels: number of valid pixels; frames: number of frames.
    """

    sq: float = 0.0
    abs: float = 0.0
    rel: float = 0.0
    pixels: int = 0
    frames: int = 0

    def update(self, pred_m: torch.Tensor, target_m: torch.Tensor, valid: torch.Tensor) -> None:
        """Add frames: ``pred_m``, ``target_m`` (B, H, W) or (B, 1, H, W) metres, ``valid`` bool, same shape."""
        d = (pred_m.double() - target_m.double())[valid]
        r = target_m.double()[valid]
        self.sq += float((d * d).sum())
        self.abs += float(d.abs().sum())
        self.rel += float((d.abs() / (r + 1e-6)).sum())
        self.pixels += int(valid.sum())
        self.frames += int(pred_m.shape[0])

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.sq, self.abs, self.rel, self.pixels, self.frames], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> "RangeErrorSums":
        v = t.tolist()
        return cls(v[0], v[1], v[2], int(v[3]), int(v[4]))

    def result(self) -> dict:
        """``rmse_m``, ``mae_m``, ``rel_err``, ``valid_pixels``, ``frames`` (NaN metrics when no pixel)."""
        n = max(self.pixels, 1)
        nan = float("nan")
        return {"rmse_m": (self.sq / n) ** 0.5 if self.pixels else nan, "mae_m": self.abs / n if self.pixels else nan,
                "rel_err": self.rel / n if self.pixels else nan, "valid_pixels": self.pixels, "frames": self.frames}


def valid_mask(range_m: torch.Tensor, min_range_m: float, max_range_m: float) -> torch.Tensor:
    """Pixels whose input range lies in [min_range_m, max_range_m] (bool, same shape)."""
    return (range_m >= min_range_m) & (range_m <= max_range_m)


def downsample_baseline(range_m: torch.Tensor, factor: tuple[int, int], min_range_m: float,
                        max_range_m: float) -> torch.Tensor:
    """Trivial codec at compression ``factor[0] * factor[1]``: clamp to the valid interval, area-downsample
    by ``factor`` (rows, cols), upsample bilinearly back.

    Args:
        range_m: (B, 1, H, W) metres; H, W need not divide by the factor (area pooling pads by edge
            replication of the last partial block via ``adaptive`` sizes).

    Returns:
        (B, 1, H, W) metres.
    """
    x = range_m.clamp(min_range_m, max_range_m)
    h, w = x.shape[-2:]
    small = F.adaptive_avg_pool2d(x, (max(1, round(h / factor[0])), max(1, round(w / factor[1]))))
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def factor_pairs(ratio: int) -> list[tuple[int, int]]:
    """All (rows, cols) integer factorisations of ``ratio`` (e.g. 4 -> (1, 4), (2, 2), (4, 1))."""
    return [(a, ratio // a) for a in range(1, ratio + 1) if ratio % a == 0]
