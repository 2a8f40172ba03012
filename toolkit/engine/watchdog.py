"""Per-step watchdog: a rank that makes no progress for ``dist.timeout_s`` makes every rank exit naming it.

Under torchrun (or any launch with several ranks) a frozen process (SIGSTOP, a hung driver), a killed one
whose peers wait in a collective, or a lost node otherwise leaves the survivors blocked until a
collective's own timeout (gloo/NCCL: 30 min by default) or forever. This is the role of the NCCL watchdog
(``TORCH_NCCL_ASYNC_ERROR_HANDLING``) and of torchtitan's ``comm.train_timeout_seconds``; this watchdog
also works on gloo and names the culprit.

How: every rank runs two daemon threads (:class:`Watchdog`). The training loop calls :meth:`Watchdog.beat`
after each optimizer step (a host assignment: no collective, no device read). Every ``heartbeat_s`` the
store thread publishes ``"{step} {tick}"`` to the job's c10d TCPStore (the one torchrun's agent, or rank 0 when
launched without torchrun, already runs at ``MASTER_ADDR:MASTER_PORT``), through a client connection of
its own with a short timeout. ``step`` moves only when the training loop moves; ``tick`` moves as long as
the process (and its thread) runs and reaches the store. Rank 0 watches every rank's heartbeat, the other
ranks watch rank 0's; each rank watches its own step. Ages are measured on the watching process's
monotonic clock (when a value was last seen to change), so clocks of different nodes do not matter.
The judging thread never touches the store (a call to an unreachable store blocks): it reads what the
store thread saw, and the time of the store's last answer.

A watched rank whose step has not moved for ``timeout_s`` triggers the exit. The message names, in order
of preference: a rank whose heartbeat stopped too (frozen, dead, or its node unreachable), else the rank
with the oldest step. The detecting rank writes it to the store's ``abort`` key, every other rank reads it
within one heartbeat, and each rank prints ``error: rank R: watchdog: rank S made no progress since step
N (T s ...)``, flushes the run's logs and leaves with :data:`EXIT_HUNG` through ``os._exit`` (a thread
cannot unwind a main thread blocked in C++). A rank that cannot reach the store for ``timeout_s`` exits
the same way, naming the store (the node of rank 0 lost, or the network partitioned).

Checkpoints: the exit may come during a save (a rank stuck in the save's gather is a stuck rank too), and
that is safe: every file is written to a temporary name and renamed into place (:mod:`toolkit.files`;
a rename is one system call, never cut in half), so the folder holds the previous complete checkpoint
or the new one, plus at most a ``.tmp`` that the next start removes. Under ``torchrun --max-restarts=N``
the non-zero exit restarts the group, which resumes from the newest complete checkpoint.

A launcher can act on a fault before the exit through :func:`set_fault_hook` (e.g. ``launch/job.py``
requeues a SLURM job); the engine itself knows nothing of schedulers.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

#: exit code of a rank that the watchdog stopped (1: failed, 2: could not start, 130: aborted; toolkit.train)
EXIT_HUNG = 3


_fault_hook: Callable[[str, bool], None] | None = None


def set_fault_hook(fn: Callable[[str, bool], None] | None) -> Callable[[str, bool], None] | None:
    """Register ``fn(message, detected_here)``, called on every rank the watchdog stops, after its error line
    and before the logs are flushed and the process exits with :data:`EXIT_HUNG` (on the detecting rank also
    before the other ranks are told to exit).

    ``detected_here`` is True on the rank that detected the fault (usually one: rank 0, or the survivor that
    lost rank 0), False on the ranks that read another rank's abort. The hook runs in the watchdog's thread
    while the main thread may be blocked in a collective: it must not touch the process group. Its errors
    are printed as a warning and ignored. ``None`` removes the hook. Returns the previous hook."""
    global _fault_hook
    previous, _fault_hook = _fault_hook, fn
    return previous


def process_group_timeout(timeout_s: float) -> timedelta | None:
    """The process group's init and collective timeout for ``dist.timeout_s`` (None: torch's default).

    1.25 x ``timeout_s`` + 5 s: a collective stuck on a dead peer raises only after the watchdog has
    named that peer (an error from inside gloo/NCCL does not say which rank is missing)."""
    return timedelta(seconds=1.25 * timeout_s + 5.0) if timeout_s > 0 else None


def heartbeat_interval(timeout_s: float, heartbeat_s: float = 0.0) -> float:
    """Seconds between two heartbeats: ``heartbeat_s`` if set, else ``timeout_s / 10`` clamped to [0.2, 5]."""
    return heartbeat_s if heartbeat_s > 0 else min(5.0, max(0.2, timeout_s / 10.0))


@dataclass
class _Seen:
    """A watched rank as last seen: its heartbeat and when (monotonic s, here) its step and tick last moved."""

    step: int | None
    tick: int | None
    step_t: float
    tick_t: float


def _store_client(timeout: float):
    """A TCPStore client of our own to ``MASTER_ADDR:MASTER_PORT`` (a separate connection, so the watchdog
    never waits behind, or blocks, the training thread's use of the default store); None without them."""
    import torch.distributed as dist

    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not host or not port:
        return None
    return dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=timeout),
                         wait_for_workers=False)


class Watchdog:
    """Exit every rank when one stops making progress (see the module docstring).

    Args:
        timeout_s: seconds without a step on a rank before every rank exits (0 = off: every method is a no-op).
        rank, world_size: this process's rank and the number of ranks.
        heartbeat_s: seconds between heartbeats (0 = :func:`heartbeat_interval`'s default).
        on_exit: called (errors ignored) before the process exits, e.g. to flush the run's logs.
        store_factory: returns the store to publish to (default: a client to ``MASTER_ADDR:MASTER_PORT``,
            with the heartbeat's timeout); called again after a store error.
        exit: how to leave (default ``os._exit``; tests of the logic pass a recorder).

    The store keys live under ``toolkit/watchdog/{TORCHELASTIC_RESTART_COUNT}/`` so that a group
    restarted by ``torchrun --max-restarts`` does not read the previous attempt's heartbeats or abort.
    """

    def __init__(self, timeout_s: float, rank: int = 0, world_size: int = 1, heartbeat_s: float = 0.0,
                 on_exit: Callable[[], None] | None = None, store_factory: Callable[[], object] | None = None,
                 exit: Callable[[int], None] = os._exit):
        self.timeout, self.rank, self.world = float(timeout_s), rank, world_size
        self.interval = heartbeat_interval(self.timeout, heartbeat_s)
        self.on_exit, self._exit = on_exit, exit
        self._factory = store_factory or (lambda: _store_client(max(1.0, 2 * self.interval)))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self.prefix = f"toolkit/watchdog/{attempt}/"
        self.step, self._beat_t = 0, time.monotonic()
        self._tick = 0
        self._seen: dict[int, _Seen] = {}
        self._store = None
        self._store_ok_t = time.monotonic()
        self._store_error = ""
        self._abort: str | None = None  # another rank's message, read from the store
        self._lock = threading.Lock()    # _seen: written by the store thread, read by the judging one
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._io: threading.Thread | None = None
        self.message: str | None = None  #: set when the watchdog fired

    @property
    def enabled(self) -> bool:
        return self.timeout > 0

    # ----------------------------------------------------------------------------- the loop's side
    def beat(self, step: int) -> None:
        """This rank finished ``step`` (or is otherwise making progress): a host assignment, nothing else."""
        self.step, self._beat_t = step, time.monotonic()

    @contextlib.contextmanager
    def watching(self, step: int):
        """Run the watchdog thread around a training loop that starts at ``step``."""
        self.start(step)
        try:
            yield self
        finally:
            self.stop()

    def start(self, step: int = 0) -> None:
        if not self.enabled or self._thread is not None:
            return
        self.beat(step)
        self._stop.clear()  # a second fit() in the same process watches again
        self._abort, self._seen, self._store_ok_t = None, {}, time.monotonic()
        if self.world > 1:  # the store's calls may block (a lost node): never in the judging thread
            self._io = threading.Thread(target=self._io_run, name="toolkit-watchdog-store", daemon=True)
            self._io.start()
        self._thread = threading.Thread(target=self._run, name="toolkit-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._thread, self._io):
            if thread is not None:
                thread.join(timeout=max(5.0, 3 * self.interval))
        self._thread = self._io = None

    # ------------------------------------------------------------------------------- the thread
    def _run(self) -> None:
        first = True
        while first or not self._stop.wait(self.interval):
            first = False
            try:
                problem = self.check(time.monotonic())
            except Exception as exc:  # noqa: BLE001 - a bug here must not kill training silently
                problem = None
                print(f"warning: rank {self.rank}: watchdog check failed: {type(exc).__name__}: {exc}",
                      file=sys.stderr, flush=True)
            if problem is not None and not self._stop.is_set():
                self.fire(*problem)
                return

    def check(self, now: float) -> tuple[str, bool] | None:
        """One judgement (never blocks): another rank's abort, an unreachable store, a rank without
        progress. Returns ``(message, detected here)`` when every rank must exit, else None."""
        if self._abort is not None:
            return self._abort, False
        age = now - self._store_ok_t
        if self.world > 1 and age > self.timeout:
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            return (f"the rendezvous store at {where} has not answered for {age:.1f} s > dist.timeout_s="
                    f"{self.timeout:g}: its node lost (torchrun's node 0, else rank 0's), rank 0 frozen if it "
                    f"hosts it, or the network partitioned ({self._store_error or 'no reply'}); "
                    f"rank {self.rank} is at step {self.step}", True)
        with self._lock:
            return self._judge(now)

    def _io_run(self) -> None:
        """The store thread: one exchange per heartbeat (each may block up to the client's timeout)."""
        while not self._stop.is_set():
            self._exchange()
            self._stop.wait(self.interval)

    def _exchange(self) -> None:
        """Publish this rank's heartbeat, read the abort key and the watched ranks' heartbeats."""
        self._tick += 1
        try:
            if self._store is None:
                self._store = self._factory()
                if self._store is None:  # no store to talk to: own progress only
                    self.world = 1
                    return
            store = self._store
            store.set(self.prefix + f"hb/{self.rank}", f"{self.step} {self._tick}")
            abort = self.prefix + "abort"
            if store.check([abort]):
                self._abort = store.get(abort).decode()
                return
            watched = range(self.world) if self.rank == 0 else [0]
            values = {}
            for r in watched:
                if r != self.rank:
                    key = self.prefix + f"hb/{r}"
                    values[r] = store.get(key).decode() if store.check([key]) else None
            now = time.monotonic()
            with self._lock:
                for r, value in values.items():
                    self._see(r, value, now)
            self._store_ok_t, self._store_error = now, ""
        except Exception as exc:  # noqa: BLE001 - unreachable store: reconnect next time; check() judges the age
            self._store = None
            self._store_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"

    def _see(self, rank: int, value: str | None, now: float) -> None:
        step, tick = (int(x) for x in value.split()) if value else (None, None)
        seen = self._seen.get(rank)
        if seen is None:
            self._seen[rank] = _Seen(step, tick, now, now)
            return
        if step != seen.step:
            seen.step, seen.step_t = step, now
        if tick != seen.tick:
            seen.tick, seen.tick_t = tick, now

    def _judge(self, now: float) -> tuple[str, bool] | None:
        """Has a watched rank (this one included) made no progress for ``timeout_s``? Then name the culprit."""
        own_age = now - self._beat_t
        stale = [r for r, s in self._seen.items() if now - s.step_t > self.timeout]
        # a rank other than 0 sees only rank 0 and itself: when rank 0 is alive, it names the culprit (it
        # watches everyone), so wait a few heartbeats more for its abort before blaming this rank
        grace = 0.0 if self.rank == 0 or self.world == 1 else 3 * self.interval + 2.0
        if not stale and own_age <= self.timeout + grace:
            return None
        # frozen, dead or unreachable first: its heartbeat thread stopped too
        silent = [(now - s.tick_t, r) for r, s in self._seen.items() if now - s.tick_t > 3 * self.interval + 1.0]
        if silent:
            _, r = max(silent)
            seen = self._seen[r]
            step = "?" if seen.step is None else seen.step
            # the ranks move in lockstep: this rank's own stall, if longer, is the better measure of theirs
            age = max(now - seen.step_t, own_age)
            return (f"rank {r} made no progress since step {step} ({age:.1f} s > dist.timeout_s={self.timeout:g}) "
                    f"and sent no heartbeat for {now - seen.tick_t:.1f} s: frozen, dead, or its node unreachable "
                    f"(rank {self.rank} is at step {self.step})", True)
        candidates = [(self.step, -own_age, self.rank)] + [
            (s.step if s.step is not None else -1, -(now - s.step_t), r) for r, s in self._seen.items()]
        step, neg_age, r = min(candidates)
        return (f"rank {r} made no progress since step {step} ({-neg_age:.1f} s > dist.timeout_s={self.timeout:g}) "
                f"but its process is alive: stuck in a step, a collective or the data", True)

    def fire(self, message: str, detected_here: bool = True) -> None:
        """Print the error, run the :func:`set_fault_hook` hook, tell the other ranks (if detected here), flush
        the logs, exit with :data:`EXIT_HUNG`.

        The hook runs before the other ranks are told: they exit as soon as they read the abort, and a launcher
        may end the job when a task exits (``srun --kill-on-bad-exit``), which must not cut the hook short
        (e.g. ``scontrol requeue`` on this rank)."""
        self.message = message
        print(f"error: rank {self.rank}: watchdog: {message}", file=sys.stderr, flush=True)
        hook = _fault_hook
        if hook is not None:
            try:
                hook(message, detected_here)
            except Exception as exc:  # noqa: BLE001 - the exit must happen regardless
                print(f"warning: rank {self.rank}: watchdog fault hook failed: {type(exc).__name__}: {exc}",
                      file=sys.stderr, flush=True)
        store = self._store
        if detected_here and store is not None:  # in a thread of its own: the store may not answer
            def tell():
                with contextlib.suppress(Exception):
                    store.set(self.prefix + "abort", f"{message} (detected by rank {self.rank})")

            teller = threading.Thread(target=tell, daemon=True)
            teller.start()
            teller.join(timeout=max(2.0, 2 * self.interval))
        if self.on_exit is not None:
            with contextlib.suppress(Exception):
                self.on_exit()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        self._exit(EXIT_HUNG)
