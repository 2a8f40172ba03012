"""BEV losses as Simple-BEV computes them, and Kendall et al.'s uncertainty weighting as FIERY and Simple-BEV
apply it (``shared/notes/bev.md`` section 3).

* ``seg``: BCE-with-logits with ``pos_weight`` (2.13, from Lift-Splat-Shoot), mean over ``valid`` cells:
  sum(l * valid) / (1e-6 + sum(valid)).
* ``center``: balanced MSE, 1/2 [mean over gt > 0.5 + mean over gt < 0.5] of (pred - gt)^2 (no valid mask).
* ``offset``: L1 summed over the 2 channels, mean over instance cells (``seg * valid``).
* Uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018), with a learnable ``w = log(sigma^2)`` per
  head: classification form for ``seg``: ``s * L * exp(-w) + w / 2``; regression form for ``center`` and
  ``offset``: ``L / (2 exp(w)) + w / 2``. ``s`` is 1 (FIERY) or 10 (Simple-BEV's extra factor on seg). The
  total can be negative; that is expected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("seg", "center", "offset")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(x * mask) / (1e-6 + sum(mask)) over all elements (``mask`` broadcast to ``x``)."""
    mask = mask.expand_as(x).to(x.dtype)
    return (x * mask).sum() / (1e-6 + mask.sum())


def seg_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, pos_weight: float = 2.13) -> torch.Tensor:
    """Masked BCE-with-logits. ``logits``, ``target``, ``valid``: (B, 1, Z, X) float (target, valid in {0, 1})."""
    pw = torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw, reduction="none")
    return masked_mean(loss, valid)


def balanced_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1/2 [mean over target > 0.5 + mean over target < 0.5] of (pred - target)^2; (B, 1, Z, X)."""
    err = (pred - target) ** 2
    return 0.5 * (masked_mean(err, (target > 0.5).to(err.dtype)) + masked_mean(err, (target < 0.5).to(err.dtype)))


def offset_loss(pred: torch.Tensor, target: torch.Tensor, seg: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """L1 summed over the 2 offset channels, mean over cells with ``seg * valid``. pred/target (B, 2, Z, X)."""
    return masked_mean((pred - target).abs().sum(1, keepdim=True), seg * valid)


def uncertainty_weighted(losses: dict[str, torch.Tensor], log_vars: dict[str, torch.Tensor],
                         seg_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """The weighted terms whose sum is the total loss.

    Args:
        losses: ``seg``, ``center``, ``offset`` -> scalar losses.
        log_vars: the same keys -> learnable scalars ``w = log(sigma^2)``.
        seg_scale: extra factor on the seg term (Simple-BEV: 10; FIERY: 1).

    Returns:
        name -> weighted term: ``seg`` = ``seg_scale * L exp(-w) + w / 2``, others ``L / (2 exp(w)) + w / 2``.
    """
    out = {}
    for name, loss in losses.items():
        w = log_vars[name]
        if name == "seg":
            out[name] = seg_scale * loss * torch.exp(-w) + 0.5 * w
        else:
            out[name] = loss / (2.0 * torch.exp(w)) + 0.5 * w
    return out


class UncertaintyWeights(nn.Module):
    """One learnable ``log(sigma^2)`` per head, initialised at 0 (FIERY, Simple-BEV)."""

    def __init__(self, heads=HEADS):
        super().__init__()
        self.log_vars = nn.ParameterDict({h: nn.Parameter(torch.zeros(())) for h in heads})

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.log_vars.items()}
