"""``profile:`` section: ``torch.profiler`` over training steps, traces under ``RUN/profile/``.

The schedule is torch's (``torch.profiler.schedule``): after ``skip_first`` steps, cycles of ``wait``
idle steps, ``warmup`` traced-but-discarded steps and ``active`` recorded steps, ``repeat`` times. At
the end of each cycle the trace is written by ``torch.profiler.tensorboard_trace_handler`` as
``RUN/profile/rank{R}.{timestamp}.pt.trace.json`` (Chrome trace format: open it in
https://ui.perfetto.dev or chrome://tracing, or with TensorBoard's profiler plugin:
``tensorboard --logdir RUN/profile``). With ``memory_snapshot`` on CUDA, the caching allocator's
history is recorded over the same steps and dumped to ``RUN/profile/memory_snapshot_rank{R}.pickle``
(drag it into https://pytorch.org/memory_viz).

Usage (the trainer does this; ``start``/``close`` are ``__enter__``/``__exit__``)::

    with StepProfiler(cfg.profile, run_dir, rank, device) as prof:
        for step in ...:
            train_step(...)
            prof.step()
"""

from __future__ import annotations

from pathlib import Path

import torch


class StepProfiler:
    """Context manager that profiles the steps between its :meth:`step` calls (a no-op when
    ``profile.enabled`` is false or this rank is not profiled).

    Args:
        cfg: the run's :class:`toolkit.config.ProfileConfig`.
        run_dir: the run folder (traces go to ``run_dir/profile``).
        rank: this process's rank (only rank 0 is profiled unless ``cfg.all_ranks``).
        device: the training device (CUDA adds CUDA activities and the memory snapshot).
    """

    def __init__(self, cfg, run_dir: Path, rank: int = 0, device: torch.device | str = "cpu"):
        self.cfg, self.rank = cfg, rank
        self.dir = Path(run_dir) / "profile"
        self.device = torch.device(device)
        self.enabled = bool(cfg.enabled) and (rank == 0 or bool(cfg.all_ranks))
        self.prof = None
        self.steps = 0
        self.snapshot = self.enabled and bool(cfg.memory_snapshot) and self.device.type == "cuda"
        #: last step recorded by the schedule (steps counted from the first :meth:`step` of this process)
        self.last_step = cfg.skip_first + (cfg.wait + cfg.warmup + cfg.active) * cfg.repeat

    def __enter__(self) -> "StepProfiler":
        return self.start()

    def start(self) -> "StepProfiler":
        """Start profiling (the schedule counts steps from here); idempotent."""
        if not self.enabled or self.prof is not None or self.steps:
            return self
        from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

        self.dir.mkdir(parents=True, exist_ok=True)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        c = self.cfg
        self.prof = profile(activities=activities,
                            schedule=schedule(skip_first=c.skip_first, wait=c.wait, warmup=c.warmup, active=c.active,
                                              repeat=c.repeat),
                            on_trace_ready=tensorboard_trace_handler(str(self.dir), worker_name=f"rank{self.rank}"),
                            record_shapes=c.record_shapes, profile_memory=c.profile_memory, with_stack=c.with_stack)
        self.prof.__enter__()
        if self.snapshot:
            torch.cuda.memory._record_memory_history(max_entries=100_000)
        return self

    def step(self) -> None:
        """Mark the end of one training step."""
        if self.prof is None:
            return
        self.prof.step()
        self.steps += 1
        if self.steps >= self.last_step:
            self._stop()

    def __exit__(self, *exc) -> None:
        self._stop()

    def close(self) -> None:
        """Stop profiling and write what is pending (also after an error); idempotent."""
        self._stop()

    def _stop(self) -> None:
        """Write what is pending (the profiler flushes a cycle cut short by the end of training) and
        the memory snapshot; stop recording."""
        if self.prof is None:
            return
        prof, self.prof = self.prof, None
        try:
            prof.__exit__(None, None, None)
        finally:
            if self.snapshot:
                torch.cuda.memory._dump_snapshot(str(self.dir / f"memory_snapshot_rank{self.rank}.pickle"))
                torch.cuda.memory._record_memory_history(enabled=None)

    def traces(self) -> list[Path]:
        """The trace files written so far by this rank."""
        return sorted(self.dir.glob(f"rank{self.rank}.*.pt.trace.json*"))
