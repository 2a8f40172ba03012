"""Range-map images for TensorBoard and PNG output (matplotlib colour maps, no plotting)."""

from __future__ import annotations

import math

import numpy as np
import torch


def _colorize(values: np.ndarray, cmap: str, lo: float, hi: float, invalid: np.ndarray | None = None) -> np.ndarray:
    """(H, W) values -> (H, W, 3) float RGB in [0, 1]; ``invalid`` pixels black."""
    import matplotlib

    t = np.clip((values - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    rgb = matplotlib.colormaps[cmap](t)[..., :3]
    if invalid is not None:
        rgb[invalid] = 0.0
    return rgb


def range_rgb(range_m: np.ndarray, valid: np.ndarray, min_range_m: float, max_range_m: float) -> np.ndarray:
    """Log-range colouring (near = dark, far = bright), (H, W, 3) float in [0, 1]."""
    logr = np.log(np.clip(range_m, min_range_m, max_range_m))
    return _colorize(logr, "turbo", math.log(min_range_m), math.log(max_range_m), ~valid)


def error_rgb(abs_err_m: np.ndarray, valid: np.ndarray, max_err_m: float = 5.0) -> np.ndarray:
    """|error| in metres, 0 (dark) to ``max_err_m`` (bright), (H, W, 3)."""
    return _colorize(abs_err_m, "magma", 0.0, max_err_m, ~valid)


def range_images(range_m: torch.Tensor, pred_m: torch.Tensor, valid: torch.Tensor, min_range_m: float,
                 max_range_m: float, row_scale: int = 4) -> dict[str, torch.Tensor]:
    """TensorBoard images (3, H * row_scale, W) in [0, 1]: ``range_input``, ``range_recon``, ``range_abs_error``.

    Args:
        range_m, pred_m: (H, W) metres; valid: (H, W) bool; row_scale: rows are repeated for legibility.
    """
    r, p, v = (t.detach().float().cpu().numpy() for t in (range_m, pred_m, valid))
    v = v.astype(bool)
    images = {"range_input": range_rgb(r, v, min_range_m, max_range_m),
              "range_recon": range_rgb(p, v, min_range_m, max_range_m),
              "range_abs_error": error_rgb(np.abs(p - r), v)}
    return {k: torch.from_numpy(np.repeat(img, row_scale, axis=0)).permute(2, 0, 1).float() for k, img in images.items()}
