"""One optimizer step, and the window of training scalars between two log lines.

:class:`TrainStep` runs ``grad_accum`` micro-steps, then one update through the run's strategy
(:class:`toolkit.engine.strategy.Strategy`: ``backward``, ``step``, ``update_ema``; the same calls for
DDP, DeepSpeed and FSDP2), steps the schedule and lets the task adjust the model.

No host reads per step: loss terms and logged values are summed on the device (:class:`MetricWindow`,
read once per log step), and the per-step agreement is read only at *sync points*
(:meth:`TrainStep.sync`: every ``sync_every`` steps, at log steps, before a checkpoint and at the end;
the trainer chooses them by step number, so every rank reads at the same steps). On CUDA nothing in
between waits for the GPU.

Non-finite guard: a step whose loss (on any rank) or gradient norm is NaN or infinite is *skipped* on
every rank. The ranks agree on the loss in the one small all-reduce (MAX) per step that also carries the
stop request (``stop_request``); the gradient norm is global (the same on every rank), so the guard adds
no collective. Where the strategy decides on the device (``strategy.device_skip``: the fused AdamW takes
the flag as ``found_inf``), nothing is read: weights, moments and the optimizer's step count stay as
they are, the EMA update is weighted by the flag (0 on a skipped step), gradients are dropped. What
lives on the host is reconciled at the next sync point, where the flags of the steps since the last
one are read in one go: skipped steps are counted, the schedule and the EMA's warm-up count are taken
back by the number of skipped steps (``Schedule.rewind``, ``EMA.rewind``: between a skip and the sync
point the lr and EMA decay are those of one step further per skip), and ``max_bad_steps`` skips in a row
raise :class:`NonFiniteError` naming the step where the limit was reached and the last finite
checkpoint. ``task.after_optimizer_step`` runs after every step, skipped ones too (the tasks' updates
are projections such as clamping a logit scale: a no-op on unchanged weights). A stop request is acted
on at the first sync point after it (at most ``sync_every`` steps later).

Host path (one read of the agreement per step, the skip decided on the host): fp16 (the ``GradScaler``
reads its ``found_inf`` on the host in every step anyway), FSDP2 (foreach AdamW) and DeepSpeed (the
engine decides inside its step).
"""

from __future__ import annotations

import time
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
    and of the gradient norm before clipping. ``good``: a device bool, False if the step was skipped
    (non-finite), when the skip was decided on the device; else None and ``skipped`` says it on the host.
    ``skipped_total`` and ``stop``: the counters as known on the host after this step (see
    :meth:`TrainStep.sync`)."""

    losses: dict[str, torch.Tensor]
    logs: dict[str, torch.Tensor]
    grad_norm: torch.Tensor
    skipped: bool = False
    skipped_total: int = 0
    stop: int = 0
    good: torch.Tensor | None = None


class TrainStep:
    """Callable that does one optimizer step on the next ``grad_accum`` batches of a stream.

    Args:
        strategy: the run's :class:`~toolkit.engine.strategy.Strategy` (model, backward, step, EMA update).
        scheduler: a :class:`~toolkit.engine.optim.Schedule` stepped once per optimizer step.
        task: supplies ``losses`` and ``after_optimizer_step``; ema: :class:`~toolkit.engine.ema.EMA` or None.
        grad_accum: micro-steps per optimizer step; grad_clip: max global norm (0 = no clipping).
        max_bad_steps: non-finite steps in a row that stop the run (:class:`NonFiniteError`).
        last_good: returns the newest checkpoint known to hold finite weights (for the error message).
        stop_request: returns this rank's stop code (0 = none), read at every step (a host value).

    Call :meth:`sync` at the same steps on every rank before reading the counters, checkpointing or
    stopping. Its ``state_dict`` (the skipped-step counters) is saved in checkpoints (after a sync).
    """

    def __init__(self, strategy, scheduler, task, ema, grad_accum: int = 1, grad_clip: float = 0.0,
                 max_bad_steps: int = 20, last_good: Callable[[], object] | None = None,
                 stop_request: Callable[[], int] | None = None):
        self.strategy, self.scheduler, self.task, self.ema = strategy, scheduler, task, ema
        self.grad_accum = grad_accum
        self.max_norm = grad_clip if grad_clip > 0 else float("inf")  # inf: the norm is measured, nothing clipped
        self.max_bad_steps, self.last_good = max_bad_steps, last_good
        self.stop_request = stop_request or (lambda: 0)
        self.skipped_steps = 0  # over the whole run (restored on resume)
        self.bad_in_a_row = 0
        self.stop = 0           # the stop code agreed by every rank, as of the last sync point
        self.last_batch: dict | None = None  # the latest micro-batch (on the device), for pictures without a val set
        #: seconds this rank spent on its own work (reading batches, then forward + loss from the plain
        #: model's forward start, after DDP's buffer broadcast: no waiting for other ranks) since the
        #: trainer last reset it; read at log steps (toolkit.engine.stragglers)
        self.own_seconds = 0.0
        self.forward_start: float | None = None  # set by stragglers.time_forward's hook, if installed
        self.pending: list[tuple[int, torch.Tensor]] = []  # (step, agreed flags [skipped, stop]) not read yet

    @property
    def device_skip(self) -> bool:
        """Whether a non-finite step is skipped on the device, without a host read (the strategy's)."""
        return self.strategy.device_skip

    def __call__(self, batches: Iterator[dict], step: int = 0) -> StepStats:
        """One optimizer step (number ``step``, for messages).

        Raises:
            NonFiniteError: after ``max_bad_steps`` skipped steps in a row (on every rank; on the host
                path only: the device path raises from :meth:`sync`).
        """
        s, n = self.strategy, self.grad_accum
        losses: dict[str, torch.Tensor] = {}
        logs: dict[str, torch.Tensor] = {}
        for micro in range(n):
            t_own = time.perf_counter()
            batch = self.last_batch = move_batch(next(batches), s.device)
            t_data, self.forward_start = time.perf_counter(), None
            out = self.task.losses(s.model, batch)
            total = out.total()
            self.own_seconds += t_data - t_own + time.perf_counter() - (self.forward_start or t_data)
            s.backward(total / n, last=micro == n - 1)
            terms = {"loss": total, **out.losses}
            for key, value in terms.items():
                losses[key] = losses.get(key, 0.0) + value.detach().float() / n
            for key, value in out.logs.items():
                logs[key] = logs.get(key, 0.0) + value.detach().float() / n
        flags = self._agree(losses["loss"], self.stop_request())
        if s.device_skip:
            update = s.step(self.max_norm, skip=flags[0] > 0)
            good = ~update.skipped
            self._after_update(good)
            self.pending.append((step, torch.stack([update.skipped.to(torch.float32), flags[1]])))
            return StepStats(losses, logs, update.grad_norm, False, self.skipped_steps, self.stop, good=good)
        bad, code = flags.tolist()  # the host path: one read per step
        self.stop = max(self.stop, int(code))
        update = s.step(self.max_norm, skip=bool(bad))
        if update.skipped:
            self.skipped_steps += 1
            self.bad_in_a_row += 1
            if self.bad_in_a_row >= self.max_bad_steps:
                raise self._too_many(step)
        else:
            self.bad_in_a_row = 0
            self.scheduler.step()
            self._after_update(None)
        return StepStats(losses, logs, update.grad_norm, bool(update.skipped), self.skipped_steps, self.stop)

    def _after_update(self, good: torch.Tensor | None) -> None:
        """Schedule (device path: taken back at the sync point if the step was skipped), task and EMA
        (weighted by ``good``, a device bool, when the skip was decided on the device)."""
        if good is not None:
            self.scheduler.step()
        self.task.after_optimizer_step(self.strategy.module)
        if self.ema is not None:
            self.strategy.update_ema(self.ema, good=good)

    def sync(self, step: int) -> int:
        """Read the agreed flags of the steps since the last sync point (one host read) and bring the
        host's side up to date: skipped steps counted, the schedule and the EMA count taken back by the
        skips, the stop code. Every rank must call it at the same steps. Returns the stop code agreed
        by every rank (0 = none).

        Raises:
            NonFiniteError: if ``max_bad_steps`` steps in a row were skipped by one of these steps.
        """
        if not self.pending:
            return self.stop
        steps = [s for s, _ in self.pending]
        rows = torch.stack([f for _, f in self.pending]).tolist()
        self.pending.clear()
        skipped = 0
        try:
            for s, (bad, code) in zip(steps, rows):
                self.stop = max(self.stop, int(code))
                if not bad:
                    self.bad_in_a_row = 0
                    continue
                skipped += 1
                self.skipped_steps += 1
                self.bad_in_a_row += 1
                if self.bad_in_a_row >= self.max_bad_steps:
                    raise self._too_many(s)
        finally:
            self.scheduler.rewind(skipped)
            if self.ema is not None:
                self.ema.rewind(skipped)
        return self.stop

    def _agree(self, loss: torch.Tensor, stop: int) -> torch.Tensor:
        """[non-finite loss on some rank?, stop code] (float32, on the device) agreed by every rank: one
        all-reduce (MAX) with several processes. Nothing is read back (no host copy: the stop code is
        filled in on the device)."""
        flags = torch.full((2,), float(stop), dtype=torch.float32, device=loss.device)
        flags[0] = (~torch.isfinite(loss)).to(torch.float32)
        if self.strategy.world_size > 1:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        return flags

    def _too_many(self, step: int) -> NonFiniteError:
        last = self.last_good() if self.last_good is not None else None
        return NonFiniteError(f"step {step}: {self.bad_in_a_row} optimizer steps in a row (since step "
                              f"{step - self.bad_in_a_row + 1}) had a non-finite loss or gradient norm and were "
                              f"skipped (train.max_bad_steps={self.max_bad_steps}); last finite checkpoint: "
                              f"{last or 'none'}")

    def state_dict(self) -> dict:
        """The skipped-step counters (call :meth:`sync` first: pending steps are not in it)."""
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
        """Add one step; a skipped (non-finite) step counts for time and ``train/skipped_steps`` only
        (on the device when ``stats.good`` is set: its values are replaced by 0, nothing is read)."""
        self.steps += 1
        self.seconds += seconds
        self.skipped_total = stats.skipped_total
        good = stats.good
        if good is None and stats.skipped:
            return
        values = {**{f"train/{k}": v for k, v in stats.losses.items()}, **{f"train/{k}": v for k, v in stats.logs.items()},
                  "train/grad_norm": stats.grad_norm.detach().float()}
        for key, value in values.items():
            self.sums[key] += value if good is None else torch.where(good, value, 0.0)
        self.counted += 1 if good is None else good.to(torch.float32)

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.max_steps

    def mean_loss(self) -> torch.Tensor | float:
        """The running mean of ``train/loss`` (a device tensor: read it only when needed)."""
        counted = self.counted.clamp(min=1) if isinstance(self.counted, torch.Tensor) else max(self.counted, 1)
        return self.sums.get("train/loss", float("nan")) / counted

    def read(self, reduce=None, skipped_total: int | None = None) -> dict[str, float]:
        """Means over the window's steps that were not skipped (averaged over ranks by
        ``reduce(tensor) -> tensor`` if given; NaN if every step was skipped), plus step time, throughput
        and ``train/skipped_steps`` (the run's total: ``skipped_total`` if given); resets the window.
        One host read."""
        keys = sorted(self.sums)
        out = {"train/loss": float("nan")}
        if keys:  # the same keys on every rank: the ranks agree on skipped steps
            values = torch.stack([torch.as_tensor(self.sums[k], dtype=torch.float32).reshape(()) for k in keys])
            values = values / self.counted  # 0 / 0 = NaN when every step was skipped
            if reduce is not None:
                values = reduce(values)
            out.update(zip(keys, values.tolist()))
        if skipped_total is not None:
            self.skipped_total = skipped_total
        step_time = self.seconds / self.steps
        out.update({"perf/step_time_s": step_time, "perf/samples_per_s": self.samples_per_step / step_time,
                    "train/skipped_steps": float(self.skipped_total)})
        self.sums.clear()
        self.steps, self.counted, self.seconds = 0, 0, 0.0
        return out
