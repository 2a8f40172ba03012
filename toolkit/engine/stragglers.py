"""Straggler visibility: how far apart the ranks' own step times are, read at log steps.

Under DDP every rank waits for the slowest at each gradient all-reduce, so wall-clock step times are the
same on every rank and cannot show which one is slow. What differs is the time a rank spends on its own
work before it joins the collectives: reading its batches, and its forward pass + loss counted from the
plain model's forward start (:func:`time_forward`: after DDP's buffer broadcast, a collective in which a
rank waits for the others) (:attr:`toolkit.engine.step.TrainStep.own_seconds`; host time: on CUDA the
kernels' launch, on CPU their run). The slow rank has the largest.

No collective of its own: the per-rank means ride on the log step's existing one, whose all-reduce of
the window's means becomes an all-gather of those means plus this rank's own time
(:func:`gather_with_own_time`); the mean over ranks is computed from the gathered rows.
"""

from __future__ import annotations

import time

import torch


def time_forward(model: torch.nn.Module, train_step) -> None:
    """Stamp ``train_step.forward_start`` (``time.perf_counter()``) when ``model`` (the plain module, inside
    DDP) starts its first forward of a micro-step, so the time DDP's buffer broadcast waits for the other
    ranks is not counted as this rank's own work."""

    def hook(module, args):  # noqa: ARG001 - forward pre-hook signature
        if train_step.forward_start is None:
            train_step.forward_start = time.perf_counter()

    model.register_forward_pre_hook(hook)


def gather_with_own_time(accelerator, own_time_s: float, into: dict):
    """A ``reduce`` for :meth:`toolkit.engine.step.MetricWindow.read` that also gathers each rank's own time.

    Args:
        accelerator: the run's ``accelerate.Accelerator`` (its ``gather`` is the one collective).
        own_time_s: this rank's mean own time per step over the window (seconds).
        into: filled with :func:`spread` of the gathered own times when the returned function runs.

    Returns:
        ``reduce(values) -> values``: ``values`` (1-D float32, the same length on every rank) averaged over
        ranks, as ``accelerator.reduce(values, "mean")`` would (up to float rounding).
    """

    def reduce(values: torch.Tensor) -> torch.Tensor:
        device = accelerator.device
        row = torch.cat([values.to(device, torch.float32).reshape(-1),
                         torch.tensor([own_time_s], dtype=torch.float32, device=device)])
        rows = accelerator.gather(row).reshape(accelerator.num_processes, -1)
        into.update(spread(rows[:, -1]))
        return rows[:, :-1].mean(0)

    return reduce


def spread(own_times: torch.Tensor) -> dict[str, float]:
    """Scalars of the ranks' own step times.

    Args:
        own_times: (world,) seconds per step, rank ``r``'s at index ``r``.

    Returns:
        ``perf/rank_time_max_s``, ``perf/rank_time_median_s``, ``perf/rank_time_min_s`` (seconds),
        ``perf/straggler_ratio`` (max / median: 1.0 = balanced) and ``perf/slowest_rank`` (the argmax).
    """
    t = own_times.detach().float().cpu()
    hi, lo, med = float(t.max()), float(t.min()), float(t.median())
    return {"perf/rank_time_max_s": hi, "perf/rank_time_median_s": med, "perf/rank_time_min_s": lo,
            "perf/straggler_ratio": hi / med if med > 0 else float("nan"),
            "perf/slowest_rank": float(int(t.argmax()))}
