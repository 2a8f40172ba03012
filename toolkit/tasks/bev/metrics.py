"""BEV vehicle IoU as Simple-BEV and FIERY compute it (``shared/notes/bev.md`` section 4).

Prediction = sigmoid(logit) > 0.5 (equivalently logit > 0). Intersection and union are *summed over the
whole validation set* (and over ranks) and divided once: a global, one-class IoU, not a mean of per-sample
IoUs. Three settings, so results sit next to the published ones:

* ``iou``: cells with ``valid = 0`` ignored (Simple-BEV, visibility-filtered; its 47.4 on nuScenes val);
* ``iou_30m``: the same restricted to the 30 x 30 m square around the ego (FIERY's short range);
* ``iou_all``: no visibility filter, whole grid (the Lift-Splat-Shoot / FIERY "literature" setting).
"""

from __future__ import annotations

import torch


def iou_sums(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, near: torch.Tensor | None = None,
             prefix: str = "") -> dict[str, torch.Tensor]:
    """Intersection and union sums of one batch, float64.

    Args:
        logits: (B, 1, Z, X) seg logits.
        target: (B, 1, Z, X) float {0, 1}.
        valid: (B, 1, Z, X) float {0, 1}.
        near: (Z, X) bool, the cells within the short-range square (None = no ``_30m`` sums).

    Returns:
        ``{prefix}inter``, ``{prefix}union`` (valid-filtered), ``..._30m`` and ``..._all`` variants.
    """
    pred = (logits > 0).to(torch.float64)
    gt = (target > 0.5).to(torch.float64)
    v = (valid > 0.5).to(torch.float64)
    inter, union = pred * gt, (pred + gt).clamp(max=1.0)
    out = {f"{prefix}inter": (inter * v).sum(), f"{prefix}union": (union * v).sum(),
           f"{prefix}inter_all": inter.sum(), f"{prefix}union_all": union.sum()}
    if near is not None:
        m = v * near.to(v.device, torch.float64)
        out[f"{prefix}inter_30m"] = (inter * m).sum()
        out[f"{prefix}union_30m"] = (union * m).sum()
    return out


def iou_from_sums(sums: dict[str, float], prefix: str = "") -> dict[str, float]:
    """``iou``, ``iou_30m``, ``iou_all`` from summed intersections and unions (nan where a union is 0)."""
    out = {}
    for suffix in ("", "_30m", "_all"):
        i, u = sums.get(f"{prefix}inter{suffix}"), sums.get(f"{prefix}union{suffix}")
        if i is not None and u is not None:
            out[f"{prefix}iou{suffix}"] = float(i) / float(u) if float(u) > 0 else float("nan")
    return out
