"""The callable that submitit runs on every task: set up distribution, train, and handle signals.

One task per GPU (or per CPU rank), no torchrun in between: SLURM's signals then reach the training
processes directly, and submitit's requeue logic (which runs in global rank 0) sees the job's own tasks.
The distributed environment comes from SLURM's variables through
``submitit.helpers.TorchDistributedEnvironment`` (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK); each
task then uses CUDA device ``LOCAL_RANK`` (CUDA_VISIBLE_DEVICES is left alone).

Signals, and how every rank stops together even if only one receives a signal:

* the time-limit / preemption notice, sent ``signal_delay_s`` before the limit: SLURM is asked for
  ``SIGURG`` (``#SBATCH --signal=URG@...``), not submitit's USR2, because SLURM 22.05 re-sends the notice
  the moment a requeued job restarts, before any handler of ours exists: submitit's USR2 handler would
  requeue again at once, forever; SIGURG is ignored by default, so that stale notice is harmless. A
  notice (SIGURG, or USR2 sent by hand) asks the trainer to stop with ``STOP_REQUEUE``; at the next step
  boundary all ranks agree on it (an all-reduce), write a checkpoint together and return; then global
  rank 0 runs submitit's own USR2 handler, which calls :meth:`TrainJob.checkpoint` (a fresh ``TrainJob``
  with the same config: the run folder is derived from the config, so the requeued job resumes from
  that checkpoint) and requeues the job, at most ``slurm_max_num_timeout`` times after time-outs. A
  notice in the first 20 s of a *requeued* job (``SLURM_RESTART_COUNT`` > 0) that still has more time
  left than the signal delay is that stale re-send and is ignored (a real preemption also sends SIGTERM,
  below). A first run never ignores a notice: slurmctld checks time limits only every ~30 s, so a
  genuine notice can come up to that much early.
* ``SIGTERM`` (``scontrol requeue``, preemption, ``scancel``): stop with ``STOP_EXIT``: checkpoint at the
  next step and return; SLURM requeues (or cancels) the job by itself.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import submitit


class TrainJob(submitit.helpers.Checkpointable):
    """Train one resolved config (a plain dict, so later edits of the YAML do not change the job).

    Args:
        config: :func:`toolkit.config.to_dict` of the run config (with an absolute ``run.dir``).
        time_min, signal_delay_s: the job's time limit and notice delay (to recognise stale notices).
    """

    NOTICE_SIGNAL = "SIGURG"

    def __init__(self, config: dict, time_min: float = 0.0, signal_delay_s: float = 0.0):
        self.config = config
        self.time_min = time_min
        self.signal_delay_s = signal_delay_s

    def __call__(self) -> dict:
        from toolkit.config import from_dict
        from toolkit.engine.trainer import STOP_EXIT, STOP_REQUEUE, Trainer

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        print(f"[launch] {env}", file=sys.stderr, flush=True)

        started = time.time()
        cfg = from_dict(self.config, source="submitted config")
        trainer = Trainer(cfg)
        usr_sig = _submitit_signal()
        previous = {}

        def on_notice(signum, frame):  # noqa: ARG001
            elapsed = time.time() - started
            left = self.time_min * 60 - elapsed
            name = signal.Signals(signum).name
            restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
            if self.time_min and restarts > 0 and elapsed < 20 and left > self.signal_delay_s:
                print(f"[launch] rank {env.global_rank}: ignoring a stale {name} ({elapsed:.0f} s into the job, "
                      f"{left:.0f} s left)", file=sys.stderr, flush=True)
                return
            print(f"[launch] rank {env.global_rank}: {name} (time-limit or preemption notice): checkpointing "
                  "at the next step, then requeue", file=sys.stderr, flush=True)
            trainer.request_stop(STOP_REQUEUE)

        def on_term(signum, frame):  # noqa: ARG001
            print(f"[launch] rank {env.global_rank}: SIGTERM: checkpointing at the next step", file=sys.stderr,
                  flush=True)
            trainer.request_stop(STOP_EXIT)

        for sig in {usr_sig, getattr(signal, self.NOTICE_SIGNAL)} - {None}:
            previous[sig] = signal.signal(sig, on_notice)
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_term)

        try:
            summary = trainer.fit()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if summary.get("stop_code") == STOP_REQUEUE and env.global_rank == 0 and callable(previous.get(usr_sig)):
            # submitit's handler: calls self.checkpoint(), requeues (bounded for time-outs) and exits
            print("[launch] rank 0: handing over to submitit to requeue", file=sys.stderr, flush=True)
            previous[usr_sig](usr_sig, None)
        return summary

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on rank 0 before a requeue; the trainer has already written its checkpoint."""
        return submitit.helpers.DelayedSubmission(TrainJob(self.config, self.time_min, self.signal_delay_s))


def _submitit_signal():
    """The signal submitit uses for time-outs and preemption (USR2 unless SUBMITIT_PREEMPT_SIGNAL says)."""
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, name, None)
