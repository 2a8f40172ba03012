"""The callable that submitit runs on every task: set up distribution, train, and handle signals.

One task per GPU (or per CPU rank), no torchrun in between: SLURM's signals then reach the training
processes directly, and submitit's requeue logic (which runs in global rank 0) sees the job's own tasks.
The distributed environment comes from SLURM's variables through
``submitit.helpers.TorchDistributedEnvironment`` (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK); each
task then uses CUDA device ``LOCAL_RANK`` (CUDA_VISIBLE_DEVICES is left alone).

Across nodes (:func:`export_multinode_env`): submitit's MASTER_ADDR is the first node's *name*; where that
name does not resolve, or resolves to a loopback address (Debian's ``127.0.1.1 host`` line), it is
replaced by the node's ``NodeAddr`` from ``scontrol show node``. Gloo binds to the address its host name
resolves to (often 127.0.0.1), so unless ``GLOO_SOCKET_IFNAME`` is set already, it is set to the interface
that holds this node's address towards MASTER_ADDR.

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

A distributed fault (:mod:`toolkit.engine.watchdog`: a rank frozen, dead or its node lost) makes every rank
exit with code 3; SLURM alone would then end the job FAILED. The job registers a fault hook
(:meth:`TrainJob.requeue_after_fault`): the rank that detected the fault runs ``scontrol requeue
$SLURM_JOB_ID`` before exiting, while ``SLURM_RESTART_COUNT`` (requeues so far, of any cause) is below
``max_requeues`` (the profile's or ``--max-requeues``); SLURM then stops the remaining tasks (SIGTERM, then
SIGKILL after ``KillWait``, which also ends a stopped process) and the requeued job resumes from the newest
complete checkpoint. At the limit the rank prints that the job is NOT requeued and exits; ``srun
--kill-on-bad-exit=1`` (set by ``launch``) then ends the other tasks, a frozen one included, and the job
ends FAILED (without it a frozen task would hold the job until its time limit).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import submitit


class TrainJob(submitit.helpers.Checkpointable):
    """Train one resolved config (a plain dict, so later edits of the YAML do not change the job).

    Args:
        config: :func:`toolkit.config.to_dict` of the run config (with an absolute ``run.dir``).
        time_min, signal_delay_s: the job's time limit and notice delay (to recognise stale notices).
        max_requeues: requeues allowed after a watchdog fault, compared with ``SLURM_RESTART_COUNT``
            (which counts every requeue of the job, time-outs and preemptions included).
    """

    NOTICE_SIGNAL = "SIGURG"

    def __init__(self, config: dict, time_min: float = 0.0, signal_delay_s: float = 0.0, max_requeues: int = 3):
        self.config = config
        self.time_min = time_min
        self.signal_delay_s = signal_delay_s
        self.max_requeues = max_requeues

    def __call__(self) -> dict:
        from toolkit.config import from_dict
        from toolkit.engine.trainer import STOP_EXIT, STOP_REQUEUE, Trainer
        from toolkit.engine.watchdog import set_fault_hook

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        if env.num_nodes > 1:
            print(f"[launch] rank {env.global_rank}: {export_multinode_env()}", file=sys.stderr, flush=True)
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
                  "at the next sync point (at most 10 steps), then requeue", file=sys.stderr, flush=True)
            trainer.request_stop(STOP_REQUEUE)

        def on_term(signum, frame):  # noqa: ARG001
            print(f"[launch] rank {env.global_rank}: SIGTERM: checkpointing at the next sync point "
                  "(at most 10 steps)", file=sys.stderr, flush=True)
            trainer.request_stop(STOP_EXIT)

        for sig in {usr_sig, getattr(signal, self.NOTICE_SIGNAL)} - {None}:
            previous[sig] = signal.signal(sig, on_notice)
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_term)
        previous_hook = set_fault_hook(lambda message, here: self.requeue_after_fault(here, env.global_rank))

        try:
            summary = trainer.fit()
        finally:
            set_fault_hook(previous_hook)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if summary.get("stop_code") == STOP_REQUEUE and env.global_rank == 0 and callable(previous.get(usr_sig)):
            # submitit's handler: calls self.checkpoint(), requeues (bounded for time-outs) and exits
            print("[launch] rank 0: handing over to submitit to requeue", file=sys.stderr, flush=True)
            previous[usr_sig](usr_sig, None)
        return summary

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on rank 0 before a requeue; the trainer has already written its checkpoint."""
        return submitit.helpers.DelayedSubmission(TrainJob(self.config, self.time_min, self.signal_delay_s,
                                                           self.max_requeues))

    def requeue_after_fault(self, detected_here: bool, rank: int) -> bool:
        """The watchdog's fault hook: on the detecting rank of a SLURM job, ``scontrol requeue`` the job
        unless ``SLURM_RESTART_COUNT`` has reached ``max_requeues``. Prints one ``[launch]`` line saying
        what it did; returns whether it asked for the requeue (False elsewhere: other ranks, no SLURM job,
        the limit reached, scontrol failed)."""
        job_id = os.environ.get("SLURM_JOB_ID")
        if not detected_here or not job_id:
            return False
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if restarts >= self.max_requeues:
            print(f"[launch] rank {rank}: watchdog fault: job {job_id} NOT requeued: {restarts} requeue(s) done, "
                  f"limit {self.max_requeues} (--max-requeues / the profile's max_requeues)", file=sys.stderr,
                  flush=True)
            return False
        try:
            res = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"[launch] rank {rank}: watchdog fault: scontrol requeue {job_id} failed: {exc}",
                  file=sys.stderr, flush=True)
            return False
        if res.returncode != 0:
            print(f"[launch] rank {rank}: watchdog fault: scontrol requeue {job_id} failed (rc {res.returncode}): "
                  f"{res.stderr.strip()}", file=sys.stderr, flush=True)
            return False
        print(f"[launch] rank {rank}: watchdog fault: requeued job {job_id} (requeue {restarts + 1} of at most "
              f"{self.max_requeues}, SLURM_RESTART_COUNT={restarts}); it resumes from the newest complete "
              "checkpoint", file=sys.stderr, flush=True)
        return True


def _resolves_to_non_loopback(name: str) -> bool:
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET)
    except OSError:
        return False
    return bool(infos) and not any(info[4][0].startswith("127.") for info in infos)


def slurm_node_addr(node: str) -> str | None:
    """``NodeAddr`` of a SLURM node (``scontrol show node -o NODE``), or None if scontrol cannot tell."""
    try:
        out = subprocess.run(["scontrol", "show", "node", "-o", node], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for field in out.split():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1] or None
    return None


def interface_of(addr: str) -> str | None:
    """The name of the network interface that holds the IPv4 address ``addr`` (Linux), or None."""
    try:
        import fcntl
        import struct
    except ImportError:  # not Linux
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:  # SIOCGIFADDR: the interface's IPv4 address
                packed = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
            except OSError:
                continue
            if socket.inet_ntoa(packed[20:24]) == addr:
                return name
    return None


def local_addr_towards(addr: str, port: int = 9) -> str | None:
    """This host's source IPv4 address for packets to ``addr`` (a UDP ``connect``: nothing is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((addr, port))
            return sock.getsockname()[0]
    except OSError:
        return None


def export_multinode_env() -> str:
    """Make MASTER_ADDR reachable and pick gloo's interface for a multi-node job (after submitit's export).

    MASTER_ADDR (a node name) is replaced by the node's SLURM ``NodeAddr`` when the name does not resolve to
    a non-loopback IPv4 address; ``GLOO_SOCKET_IFNAME``, if unset, becomes the interface holding this node's
    source address towards MASTER_ADDR. Returns a one-line description of what was set (for the job log).
    """
    master = os.environ.get("MASTER_ADDR", "")
    notes = []
    if master and not _resolves_to_non_loopback(master):
        addr = slurm_node_addr(master)
        if addr and addr != master:
            os.environ["MASTER_ADDR"] = addr
            notes.append(f"MASTER_ADDR={addr} (NodeAddr of {master})")
    if not os.environ.get("GLOO_SOCKET_IFNAME"):
        master_ip = os.environ.get("MASTER_ADDR", "")
        try:
            master_ip = socket.gethostbyname(master_ip)
        except OSError:
            master_ip = ""
        local = local_addr_towards(master_ip) if master_ip else None
        ifname = interface_of(local) if local else None
        if ifname and ifname != "lo":
            os.environ["GLOO_SOCKET_IFNAME"] = ifname
            notes.append(f"GLOO_SOCKET_IFNAME={ifname} ({local})")
    return (f"multi-node: MASTER_ADDR={os.environ.get('MASTER_ADDR')} MASTER_PORT={os.environ.get('MASTER_PORT')} "
            f"GLOO_SOCKET_IFNAME={os.environ.get('GLOO_SOCKET_IFNAME', '')}" + (f"; set {', '.join(notes)}" if notes
                                                                                 else ""))


def _submitit_signal():
    """The signal submitit uses for time-outs and preemption (USR2 unless SUBMITIT_PREEMPT_SIGNAL says)."""
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, name, None)
