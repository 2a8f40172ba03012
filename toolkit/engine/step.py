"""One optimizer step, and the window of training scalars between two log lines.

:class:`TrainStep` runs ``grad_accum`` micro-steps (no gradient all-reduce until the last one),
clips, steps the optimizer and the schedule, lets the task update the model, and updates the EMA.

No host reads per step: loss terms and logged values are summed on the device (:class:`MetricWindow`,
read once per log step), and the per-step agreement is read only at *sync points*
(:meth:`TrainStep.sync`: every ``sync_every`` steps, at log steps, before a checkpoint and at the end;
the trainer chooses them by step number, so every rank reads at the same steps). On CUDA nothing in
between waits for the GPU.

Non-finite guard: a step whose loss (on any rank) or gradient norm is NaN or infinite is *skipped* on
every rank. The ranks agree in the one small all-reduce (MAX) per step that also carries the stop
request (``stop_request``), so the guard adds no collective. The skip itself happens on the device,
without reading the flag: the fused AdamW takes it as ``found_inf`` (as ``GradScaler`` passes it) and
leaves weights, moments and its step count untouched; the EMA update is weighted by it (0 on a skipped
step); gradients are dropped. What lives on the host is reconciled at the next sync point, where the
flags of the steps since the last one are read in one go: skipped steps are counted, the schedule and
the EMA's warm-up count are taken back by the number of skipped steps (between a skip and the sync
point the lr and EMA decay are those of one step further per skip), and ``max_bad_steps`` skips in a row
raise :class:`NonFiniteError` naming the step where the limit was reached and the last finite
checkpoint. ``task.after_optimizer_step`` runs after every step, skipped ones too (the tasks' updates
are projections such as clamping a logit scale: a no-op on unchanged weights). A stop request is acted
on at the first sync point after it (at most ``sync_every`` steps later).

Fallback (one host read per step, the guard decided on the host before ``optimizer.step()``): fp16
(the ``GradScaler`` reads its ``found_inf`` on the host in every step anyway) and optimizers that do
not take ``found_inf`` (non-fused).
"""

from __future__ import annotations

import contextlib
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
        accelerator: the run's ``accelerate.Accelerator``.
        model, optimizer: as returned by ``accelerator.prepare``; scheduler: a ``LambdaLR`` stepped once per
            optimizer step.
        task: supplies ``losses`` and ``after_optimizer_step``; ema: :class:`~toolkit.engine.ema.EMA` or None.
        grad_accum: micro-steps per optimizer step; grad_clip: max global norm (0 = no clipping).
        max_bad_steps: non-finite steps in a row that stop the run (:class:`NonFiniteError`).
        last_good: returns the newest checkpoint known to hold finite weights (for the error message).
        stop_request: returns this rank's stop code (0 = none), read at every step (a host value).

    Call :meth:`sync` at the same steps on every rank before reading the counters, checkpointing or
    stopping. Its ``state_dict`` (the skipped-step counters) is saved in checkpoints (after a sync).
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
        self.stop = 0           # the stop code agreed by every rank, as of the last sync point
        self.last_batch: dict | None = None  # the latest micro-batch (on the device), for pictures without a val set
        #: seconds this rank spent on its own work (reading batches, then forward + loss from the plain
        #: model's forward start, after DDP's buffer broadcast: no waiting for other ranks) since the
        #: trainer last reset it; read at log steps (toolkit.engine.stragglers)
        self.own_seconds = 0.0
        self.forward_start: float | None = None  # set by stragglers.time_forward's hook, if installed
        self.pending: list[tuple[int, torch.Tensor]] = []  # (step, agreed flags [bad, stop]) not read yet
        inner = getattr(optimizer, "optimizer", optimizer)  # under an accelerate.AcceleratedOptimizer
        #: skip non-finite steps on the device (no host read per step): a fused optimizer without a GradScaler
        self.device_skip = accelerator.scaler is None and bool(getattr(inner, "_step_supports_amp_scaling", False))

    def __call__(self, batches: Iterator[dict], step: int = 0) -> StepStats:
        """One optimizer step (number ``step``, for messages).

        Raises:
            NonFiniteError: after ``max_bad_steps`` skipped steps in a row (on every rank; on the host
                path only: the device path raises from :meth:`sync`).
        """
        acc, n = self.accelerator, self.grad_accum
        losses: dict[str, torch.Tensor] = {}
        logs: dict[str, torch.Tensor] = {}
        for micro in range(n):
            t_own = time.perf_counter()
            batch = self.last_batch = move_batch(next(batches), acc.device)
            t_data, self.forward_start = time.perf_counter(), None
            with acc.no_sync(self.model) if micro < n - 1 else contextlib.nullcontext():
                out = self.task.losses(self.model, batch)
                total = out.total()
                self.own_seconds += t_data - t_own + time.perf_counter() - (self.forward_start or t_data)
                acc.backward(total / n)
            terms = {"loss": total, **out.losses}
            for key, value in terms.items():
                losses[key] = losses.get(key, 0.0) + value.detach().float() / n
            for key, value in out.logs.items():
                logs[key] = logs.get(key, 0.0) + value.detach().float() / n
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), self.max_norm)
        flags = self._agree(losses["loss"], grad_norm, self.stop_request())
        if grad_norm is None:
            grad_norm = torch.full((), float("nan"), device=flags.device)
        if self.device_skip:
            bad = flags[0]
            self._update(found_inf=bad, good=bad == 0)
            self.pending.append((step, flags))
            return StepStats(losses, logs, grad_norm, False, self.skipped_steps, self.stop, good=bad == 0)
        bad, code = flags.tolist()  # the host path: one read per step
        self.stop = max(self.stop, int(code))
        if bad:
            self._skip(grad_norm, step)
        else:
            self.bad_in_a_row = 0
            self._update()
        return StepStats(losses, logs, grad_norm, bool(bad), self.skipped_steps, self.stop)

    def _update(self, found_inf: torch.Tensor | None = None, good: torch.Tensor | None = None) -> None:
        """Optimizer, schedule, task and EMA updates; with ``found_inf`` (a device 0-d float32, 1.0 = skip)
        the optimizer and the EMA leave everything as it is when it is set, without a host read."""
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        if found_inf is not None:
            inner.found_inf = found_inf  # read by the fused AdamW kernel (torch.optim.adam: found_inf=getattr(...))
        try:
            self.optimizer.step()
        finally:
            if found_inf is not None:
                del inner.found_inf
        if not self.accelerator.optimizer_step_was_skipped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        unwrapped = self.accelerator.unwrap_model(self.model)
        self.task.after_optimizer_step(unwrapped)
        if self.ema is not None:
            self.ema.update(unwrapped, good=good)

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
            self._take_back(skipped)
        return self.stop

    def _take_back(self, n: int) -> None:
        """Undo the schedule's and the EMA count's advance for ``n`` skipped steps (LambdaLR: lr = base x
        lambda(last_epoch), exactly what its ``step()`` sets)."""
        if not n:
            return
        sch = self.scheduler
        sch.last_epoch -= n
        lrs = [base * fn(sch.last_epoch) for base, fn in zip(sch.base_lrs, sch.lr_lambdas)]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        sch._last_lr = lrs
        if self.ema is not None:
            self.ema.num_updates -= n

    def _agree(self, loss: torch.Tensor, grad_norm: torch.Tensor | None, stop: int) -> torch.Tensor:
        """[skip this step?, stop code] (float32, on the device) agreed by every rank: one all-reduce
        (MAX) with several processes. Nothing is read back (no host copy: the stop code is filled in
        on the device)."""
        finite = torch.isfinite(loss)
        if grad_norm is not None:
            finite = finite & torch.isfinite(torch.as_tensor(grad_norm, device=loss.device))
        flags = torch.full((2,), float(stop), dtype=torch.float32, device=loss.device)
        flags[0] = (~finite).to(torch.float32)
        if self.accelerator.num_processes > 1:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        return flags

    def _skip(self, grad_norm: torch.Tensor | None, step: int) -> None:
        """Host path: drop this step's gradients (no update anywhere); count it; raise after too many in a row."""
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
            raise self._too_many(step)

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
