"""Reconstruction metrics of range maps in metres, and the trivial downsampling baseline.

Definitions (Cosmos LiDAR tokenizer ``lidar_cli``; ``shared/notes/lidar-tokenizer.md`` section 4), over
valid pixels (input range inside [min_range_m, max_range_m]) pooled across all frames:
``d = r_hat - r``, RMSE = sqrt(mean d^2), MAE = mean |d|, relative error = mean(|d| / (r + 1e-6)).

:func:`range_error_sums` gives the sums of one batch (the engine adds them over batches and ranks),
:func:`range_metrics` the values; :class:`RangeErrorSums` pools frames one at a time (the CLIs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def range_error_sums(pred_m: torch.Tensor, target_m: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """Float64 sums over valid pixels: ``sq`` (m^2), ``abs`` (m), ``rel`` (|d| / r) and ``pixels``.

    Args:
        pred_m, target_m: range in metres, any equal shapes (e.g. (B, 1, H, W)); valid: bool, same shape.
    """
    d = (pred_m.double() - target_m.double())[valid]
    r = target_m.double()[valid]
    return {"sq": (d * d).sum(), "abs": d.abs().sum(), "rel": (d.abs() / (r + 1e-6)).sum(), "pixels": valid.sum().double()}


def range_metrics(sums: dict[str, float]) -> dict[str, float]:
    """``rmse_m``, ``mae_m``, ``rel_err`` from :func:`range_error_sums` added up; NaN when no pixel was valid."""
    n = sums.get("pixels", 0.0)
    if not n:
        nan = float("nan")
        return {"rmse_m": nan, "mae_m": nan, "rel_err": nan}
    return {"rmse_m": (sums["sq"] / n) ** 0.5, "mae_m": sums["abs"] / n, "rel_err": sums["rel"] / n}


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
        sums = range_error_sums(pred_m, target_m, valid)
        self.sq += float(sums["sq"])
        self.abs += float(sums["abs"])
        self.rel += float(sums["rel"])
        self.pixels += int(sums["pixels"])
        self.frames += int(pred_m.shape[0])

    def result(self) -> dict:
        """``rmse_m``, ``mae_m``, ``rel_err``, ``valid_pixels``, ``frames`` (NaN metrics when no pixel)."""
        values = range_metrics({"sq": self.sq, "abs": self.abs, "rel": self.rel, "pixels": float(self.pixels)})
        return {**values, "valid_pixels": self.pixels, "frames": self.frames}


def downsample_baseline(range_m: torch.Tensor, factor: tuple[int, int], min_range_m: float,
                        max_range_m: float) -> torch.Tensor:
    """Trivial codec at compression ``factor[0] * factor[1]``: clamp to the valid interval, area-downsample
    by ``factor`` (rows, cols), upsample bilinearly back.

    Args:
        range_m: (B, 1, H, W) metres; H, W need not divide by the factor (adaptive average pooling).

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
