"""One optimizer step, and the window of training scalars between two log lines.

:class:`TrainStep` runs ``grad_accum`` micro-steps (no gradient all-reduce until the last one),
clips, steps the optimizer and the schedule, lets the task update the model, and updates the EMA.

Non-finite guard: a step whose loss (on any rank) or gradient norm is NaN or infinite is *skipped* on
every rank: no optimizer, schedule, task or EMA update, gradients dropped. With fp16 the GradScaler
still sees the overflow (it skips the update and lowers the scale, as Accelerate always does). The
ranks agree in the one small all-reduce per step that also carries the stop request
(``stop_request``), so the guard adds no collective; it reads one 2-value tensor
back to the host per step (the only host read: loss terms stay on the device until
:class:`MetricWindow` is read at a log step). ``max_bad_steps`` skips in a row raise
:class:`NonFiniteError` naming the step and the last finite checkpoint.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from toolkit.engine.device import move_batch


class NonFiniteError(RuntimeError):
    """Training produced NaN/infinite values where finite ones are needed (too many skipped steps in a
    row, or weights that cannot be checkpointed); the message names the step or file."""


@dataclass
class StepStats:
    """One optimizer step: device tensors of its loss terms and logged values (means over micro-steps)
    and of the gradient norm before clipping; on the host, whether it was skipped (non-finite), the
    run's skipped steps so far and the stop code agreed by every rank."""

    losses: dict[str, torch.Tensor]
    logs: dict[str, torch.Tensor]
    grad_norm: torch.Tensor
    skipped: bool = False
    skipped_total: int = 0
    stop: int = 0


class TrainStep:
    """Callable that does one optimizer step on the next ``grad_accum`` batches of a stream.

    Args:
        accelerator: the run's ``accelerate.Accelerator``.
        model, optimizer: as returned by ``accelerator.prepare``; scheduler: stepped once per optimizer step.
        task: supplies ``losses`` and ``after_optimizer_step``; ema: :class:`~toolkit.engine.ema.EMA` or None.
        grad_accum: micro-steps per optimizer step; grad_clip: max global norm (0 = no clipping).
        max_bad_steps: non-finite steps in a row that stop the run (:class:`NonFiniteError`).
        last_good: returns the newest checkpoint known to hold finite weights (for the error message).
        stop_request: returns this rank's stop code (0 = none), read just before the ranks agree.

    Its ``state_dict`` (the skipped-step counters) is saved in checkpoints.
    """

    def __init__(self, accelerator, model, optimizer, scheduler, task, ema, grad_accum: int = 1, grad_clip: float = 0.0,
                 max_bad_steps: int = 20, last_good: Callable[[], object] | None = None,
                 stop_request: Callable[[], int] | None = None):
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.task, self.ema = task, ema
        self.grad_accum = grad_accum
        self.max_norm = grad_clip if grad_clip > 0 else float("inf")  # inf: the norm is measured, nothing clipped
        self.max_bad_steps, self.last_good = max_bad_steps, last_good
        self.stop_request = stop_request or (lambda: 0)
        self.skipped_steps = 0  # over the whole run (restored on resume)
        self.bad_in_a_row = 0
        self.last_batch: dict | None = None  # the latest micro-batch (on the device), for pictures without a val set

    def __call__(self, batches: Iterator[dict], step: int = 0) -> StepStats:
        """One optimizer step (number ``step``, for messages).

        Raises:
            NonFiniteError: after ``max_bad_steps`` skipped steps in a row (on every rank).
        """
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
        bad, stop = self._agree(losses["loss"], grad_norm, self.stop_request())
        if bad:
            self._skip(grad_norm, step)
        else:
            self.bad_in_a_row = 0
            self.optimizer.step()
            if not acc.optimizer_step_was_skipped:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            unwrapped = acc.unwrap_model(self.model)
            self.task.after_optimizer_step(unwrapped)
            if self.ema is not None:
                self.ema.update(unwrapped)
        grad_norm = grad_norm if grad_norm is not None else torch.tensor(float("nan"))
        return StepStats(losses, logs, grad_norm, bad, self.skipped_steps, stop)

    def _agree(self, loss: torch.Tensor, grad_norm: torch.Tensor | None, stop: int) -> tuple[bool, int]:
        """(skip this step?, stop code) agreed by every rank: one all-reduce (MAX) of a 2-value tensor
        with several processes, one host read in all cases."""
        finite = torch.isfinite(loss)
        if grad_norm is not None:
            finite = finite & torch.isfinite(torch.as_tensor(grad_norm, device=loss.device))
        flags = torch.stack([(~finite).to(torch.float32).reshape(()),
                             torch.tensor(float(stop), device=finite.device)])
        if self.accelerator.num_processes > 1:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        bad, code = flags.tolist()
        return bool(bad), int(code)

    def _skip(self, grad_norm: torch.Tensor | None, step: int) -> None:
        """Drop this step's gradients (no update anywhere); count it; raise after too many in a row."""
        scaler = self.accelerator.scaler
        if scaler is not None:  # fp16: the GradScaler skips overflowing steps itself and lowers its scale
            if grad_norm is not None and not bool(torch.isfinite(torch.as_tensor(grad_norm))):
                self.optimizer.step()
            else:  # a non-finite loss with finite gradients: back off too, and reset the scaler's step state
                scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self.bad_in_a_row += 1
        if self.bad_in_a_row >= self.max_bad_steps:
            last = self.last_good() if self.last_good is not None else None
            raise NonFiniteError(f"step {step}: {self.bad_in_a_row} optimizer steps in a row (since step "
                                 f"{step - self.bad_in_a_row + 1}) had a non-finite loss or gradient norm and were "
                                 f"skipped (train.max_bad_steps={self.max_bad_steps}); last finite checkpoint: "
                                 f"{last or 'none'}")

    def state_dict(self) -> dict:
        return {"skipped_steps": self.skipped_steps, "bad_in_a_row": self.bad_in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.bad_in_a_row = int(state.get("bad_in_a_row", 0))


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
        self.steps = 0    # steps in the window
        self.counted = 0  # of which not skipped: the means are over these
        self.seconds = 0.0
        self.skipped_total = 0

    def add(self, stats: StepStats, seconds: float) -> None:
        """Add one step; a skipped (non-finite) step counts for time and ``train/skipped_steps`` only."""
        self.steps += 1
        self.seconds += seconds
        self.skipped_total = stats.skipped_total
        if stats.skipped:
            return
        for key, value in stats.losses.items():
            self.sums[f"train/{key}"] += value
        for key, value in stats.logs.items():
            self.sums[f"train/{key}"] += value
        self.sums["train/grad_norm"] += stats.grad_norm.detach().float()
        self.counted += 1

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.max_steps

    def mean_loss(self) -> torch.Tensor | float:
        """The running mean of ``train/loss`` (a device tensor: read it only when needed)."""
        return self.sums.get("train/loss", float("nan")) / max(self.counted, 1)

    def read(self, reduce=None) -> dict[str, float]:
        """Means over the window's steps that were not skipped (averaged over ranks by
        ``reduce(tensor) -> tensor`` if given; ``train/loss`` is NaN if every step was skipped), plus
        step time, throughput and ``train/skipped_steps`` (the run's total); resets the window."""
        keys = sorted(self.sums)
        out = {"train/loss": float("nan")}
        if keys:  # the same keys on every rank: the ranks agree on skipped steps
            values = torch.stack([torch.as_tensor(self.sums[k], dtype=torch.float32).reshape(()) for k in keys]) / self.counted
            if reduce is not None:
                values = reduce(values)
            out.update(zip(keys, values.tolist()))
        step_time = self.seconds / self.steps
        out.update({"perf/step_time_s": step_time, "perf/samples_per_s": self.samples_per_step / step_time,
                    "train/skipped_steps": float(self.skipped_total)})
        self.sums.clear()
        self.steps, self.counted, self.seconds = 0, 0, 0.0
        return out
