"""TensorBoard images of the BEV family: the camera inputs, predicted vs target segmentation, centre heat map and
offset field. BEV pictures are drawn with ego forward up and ego left on the left (the grid's row 0 is the
rear and column 0 the right, :mod:`toolkit.bev.grid`, so arrays are flipped in both axes for display)."""

from __future__ import annotations

import numpy as np
import torch


def _bev_view(a: np.ndarray) -> np.ndarray:
    """(R, C, ...) grid array -> display orientation (forward up, left on the left)."""
    return a[::-1, ::-1]


def camera_grid(images: torch.Tensor) -> torch.Tensor:
    """(S, 3, H, W) images in [0, 1] of one sample -> (3, 2 H, 3 W): the first three cameras on top."""
    imgs = images.detach().float().cpu().clamp(0, 1)
    S = imgs.shape[0]
    if S < 6:
        imgs = torch.cat([imgs, torch.zeros(6 - S, *imgs.shape[1:])])
    return torch.cat([torch.cat(list(imgs[:3]), 2), torch.cat(list(imgs[3:6]), 2)], 1)


def offset_colors(offset: np.ndarray, mask: np.ndarray, max_cells: float = 10.0) -> np.ndarray:
    """Offset field (2, R, C) in cells -> (R, C, 3) colour wheel: hue = direction, value = length / max_cells,
    black outside ``mask`` (R, C) bool."""
    import matplotlib.colors as mcolors

    ang = np.arctan2(offset[1], offset[0])
    mag = np.clip(np.hypot(offset[0], offset[1]) / max_cells, 0, 1)
    hsv = np.stack([(ang + np.pi) / (2 * np.pi), np.ones_like(ang), mag * mask], -1)
    return mcolors.hsv_to_rgb(hsv)


def bev_panels(seg_logits: torch.Tensor, center: torch.Tensor, offset: torch.Tensor, target: dict) -> torch.Tensor:
    """One sample's prediction next to its target: (3, 2 R, 3 C) in [0, 1].

    Top row: predicted seg probability, predicted centre heat map, predicted offsets (inside predicted seg);
    bottom row: target seg (invalid cells grey), target centre, target offsets.
    """
    p = torch.sigmoid(seg_logits.detach().float()).cpu().numpy()[0]
    c = center.detach().float().cpu().numpy()[0]
    o = offset.detach().float().cpu().numpy()
    ts = target["seg"].detach().float().cpu().numpy()[0]
    tv = target["valid"].detach().float().cpu().numpy()[0]
    tc = target["center"].detach().float().cpu().numpy()[0]
    to = target["offset"].detach().float().cpu().numpy()
    gray = lambda a: np.repeat(a[..., None], 3, -1)  # noqa: E731
    seg_t = gray(ts)
    seg_t[tv < 0.5] = (0.5, 0.5, 0.5)
    top = [gray(p), gray(c), offset_colors(o, p > 0.5)]
    bottom = [seg_t, gray(tc), offset_colors(to, ts > 0.5)]
    rows = [np.concatenate([_bev_view(a) for a in r], 1) for r in (top, bottom)]
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(rows, 0))).permute(2, 0, 1).float().clamp(0, 1)
