"""The trivial BEV baseline: the training set's per-cell vehicle frequency, thresholded.

A model that ignores its inputs can still learn *where* vehicles usually are (parked along the kerbs,
never on the ego). This baseline is exactly that prior: ``freq[r, c]`` = fraction of training samples whose
target ``seg`` is 1 in cell ``(r, c)``; the prediction is ``freq > t`` with the threshold ``t`` that maximises
the (visibility-filtered, global) IoU on the *training* set; it is then scored on the evaluation set like a
model. Only boxes are decoded (no images), so it takes seconds.
"""

from __future__ import annotations

import numpy as np

from toolkit.bev.grid import BEVGrid
from toolkit.bev.targets import bev_targets
from toolkit.data.multisensor import read_sample


def _targets(shards: str, grid: BEVGrid, categories, ignore_visibility) -> tuple[np.ndarray, np.ndarray]:
    """(N, R, C) bool seg and valid of every sample of ``shards``. Raises ValueError if there is none."""
    from toolkit.data.pipeline import eval_loader

    segs, valids = [], []

    def decode(sample, rng):
        arrays, _ = read_sample(sample)
        t = bev_targets(arrays["boxes"], grid, tuple(categories), 1.0, tuple(ignore_visibility))
        return {"seg": t["seg"][0] > 0.5, "valid": t["valid"][0] > 0.5}

    for batch in eval_loader(shards, decode, 16, num_workers=0):
        segs.append(batch["seg"].numpy())
        valids.append(batch["valid"].numpy())
    if not segs:
        raise ValueError(f"no samples read from {shards}")
    return np.concatenate(segs), np.concatenate(valids)


def _iou(pred: np.ndarray, seg: np.ndarray, valid: np.ndarray) -> float:
    inter = (pred & seg & valid).sum()
    union = ((pred | seg) & valid).sum()
    return float(inter / union) if union else float("nan")


def frequency_baseline(train_shards: str, eval_shards: str, grid: BEVGrid, categories=("vehicle.",),
                       ignore_visibility=(1,)) -> dict:
    """Fit the frequency prior on ``train_shards`` and score it on ``eval_shards``.

    Returns:
        ``iou`` (evaluation set, visibility-filtered global IoU), ``iou_all`` (unfiltered), ``threshold``,
        ``train_iou`` (at that threshold), ``train_samples``, ``eval_samples``.
    """
    seg, valid = _targets(train_shards, grid, categories, ignore_visibility)
    freq = seg.mean(0)
    best_t, best = 0.0, -1.0
    for t in np.unique(freq)[:-1]:  # predicting freq > t; the largest value would predict nothing
        iou = _iou(np.broadcast_to(freq > t, seg.shape), seg, valid)
        if iou > best:
            best_t, best = float(t), iou
    eseg, evalid = _targets(eval_shards, grid, categories, ignore_visibility)
    pred = np.broadcast_to(freq > best_t, eseg.shape)
    return {"iou": _iou(pred, eseg, evalid), "iou_all": _iou(pred, eseg, np.ones_like(evalid)), "threshold": best_t,
            "train_iou": best, "train_samples": int(len(seg)), "eval_samples": int(len(eseg))}
