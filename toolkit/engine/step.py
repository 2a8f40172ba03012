"""One optimizer step, and the window of training scalars between two log lines.

:class:`TrainStep` runs ``grad_accum`` micro-steps (no gradient all-reduce until the last one),
clips, steps the optimizer and the schedule, lets the task update the model, and updates the EMA.
It never reads a value back to the host: loss terms stay on the device until :class:`MetricWindow`
is read at a log step, so a CUDA queue is not stalled every micro-step.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterator

import torch

from toolkit.engine.device import move_batch


@dataclass
class StepStats:
    """Device tensors of one optimizer step: loss terms and logged values (means over micro-steps),
    the total loss and the gradient norm before clipping."""

    losses: dict[str, torch.Tensor]
    logs: dict[str, torch.Tensor]
    grad_norm: torch.Tensor


class TrainStep:
    """Callable that does one optimizer step on the next ``grad_accum`` batches of a stream.

    Args:
        accelerator: the run's ``accelerate.Accelerator``.
        model, optimizer: as returned by ``accelerator.prepare``; scheduler: stepped once per optimizer step.
        task: supplies ``losses`` and ``after_optimizer_step``; ema: :class:`~toolkit.engine.ema.EMA` or None.
        grad_accum: micro-steps per optimizer step; grad_clip: max global norm (0 = no clipping).
    """

    def __init__(self, accelerator, model, optimizer, scheduler, task, ema, grad_accum: int = 1, grad_clip: float = 0.0):
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.task, self.ema = task, ema
        self.grad_accum = grad_accum
        self.max_norm = grad_clip if grad_clip > 0 else float("inf")  # inf: the norm is measured, nothing clipped
        self.last_batch: dict | None = None  # the latest micro-batch (on the device), for pictures without a val set

    def __call__(self, batches: Iterator[dict]) -> StepStats:
        acc, n = self.accelerator, self.grad_accum
        losses: dict[str, torch.Tensor] = {}
        logs: dict[str, torch.Tensor] = {}
        for micro in range(n):
            batch = self.last_batch = move_batch(next(batches), acc.device)
            with acc.no_sync(self.model) if micro < n - 1 else contextlib.nullcontext():
                out = self.task.losses(self.model, batch)
                total = out.total()
                acc.backward(total / n)
            terms = {"loss": total, **out.losses}
            for key, value in terms.items():
                losses[key] = losses.get(key, 0.0) + value.detach().float() / n
            for key, value in out.logs.items():
                logs[key] = logs.get(key, 0.0) + value.detach().float() / n
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), self.max_norm)
        self.optimizer.step()
        if not acc.optimizer_step_was_skipped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        unwrapped = acc.unwrap_model(self.model)
        self.task.after_optimizer_step(unwrapped)
        if self.ema is not None:
            self.ema.update(unwrapped)
        return StepStats(losses, logs, grad_norm if grad_norm is not None else torch.tensor(float("nan")))


class MetricWindow:
    """Training scalars summed over the steps since the last log line, read (and reset) at log steps.

    Args:
        every: log every this many steps (and at ``max_steps``).
        max_steps: the run's last step.
        samples_per_step: global samples per optimizer step (for samples/s).
    """

    def __init__(self, every: int, max_steps: int, samples_per_step: int):
        self.every, self.max_steps, self.samples_per_step = every, max_steps, samples_per_step
        self.sums: dict[str, torch.Tensor | float] = defaultdict(float)
        self.steps = 0
        self.seconds = 0.0

    def add(self, stats: StepStats, seconds: float) -> None:
        for key, value in stats.losses.items():
            self.sums[f"train/{key}"] += value
        for key, value in stats.logs.items():
            self.sums[f"train/{key}"] += value
        self.sums["train/grad_norm"] += stats.grad_norm.detach().float()
        self.steps += 1
        self.seconds += seconds

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.max_steps

    def mean_loss(self) -> torch.Tensor | float:
        """The running mean of ``train/loss`` (a device tensor: read it only when needed)."""
        return self.sums["train/loss"] / max(self.steps, 1)

    def read(self, reduce=None) -> dict[str, float]:
        """Means over the window (averaged over ranks by ``reduce(tensor) -> tensor`` if given), plus
        step time and throughput; resets the window."""
        keys = sorted(self.sums)
        values = torch.stack([torch.as_tensor(self.sums[k], dtype=torch.float32).reshape(()) for k in keys]) / self.steps
        if reduce is not None:
            values = reduce(values)
        out = dict(zip(keys, values.tolist()))
        step_time = self.seconds / self.steps
        out.update({"perf/step_time_s": step_time, "perf/samples_per_s": self.samples_per_step / step_time})
        self.sums.clear()
        self.steps, self.seconds = 0, 0.0
        return out
