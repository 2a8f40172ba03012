"""One writer per run folder: an exclusive lock that rank 0 holds for the run's lifetime.

The lock is ``fcntl.flock`` on ``RUN/.lock`` (Linux, macOS; on NFS, Linux emulates it with POSIX record
locks, which the server arbitrates). It belongs to the open file, so the kernel drops it when its
process ends in any way, ``kill -9`` included: a stale lock never blocks a restart, and there is no
lock file to clean up. The file is never deleted (deleting a lock file lets two processes lock two
different files); it holds ``pid``, host and start time of the current holder, for the message a
second writer gets::

    run folder 'runs/x' is in use by pid 4242 on host node7 (since 2026-11-22 10:00:00); ...

Within one process the lock is reentrant: the training CLI takes it as soon as the config is known
(so a second run fails in seconds, before building anything) and the :class:`~toolkit.engine.trainer.
Trainer` takes it again; it is released when every holder has released it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another process holds the run folder's lock; the message names the folder and the holder."""


class RunLock:
    """The exclusive lock of one run folder (use :func:`acquire_run_lock`, which makes it reentrant).

    Args:
        run_dir: the run folder (created if missing).
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None
        self.holders = 0

    def acquire(self) -> None:
        """Take the lock without waiting.

        Raises:
            RunLockedError: if another process holds it (naming the folder, the holder's pid and host).
            OSError: if the folder or the lock file cannot be created.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunLockedError(f"run folder '{self.run_dir}' is in use by {self.holder()}; wait for that run "
                                 f"to end or stop it (a killed run releases the lock by itself; "
                                 f"lock: {self.path})") from None
        stamp = f"pid {os.getpid()} on host {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, stamp.encode(), 0)
        self.fd = fd

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it ("pid N on host H (since ...)")."""
        try:
            text = self.path.read_text(errors="replace").strip()
        except OSError:
            text = ""
        return text or "another process (no holder recorded yet)"

    def release(self) -> None:
        """Drop the lock (closing the file releases it)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


_HELD: dict[Path, RunLock] = {}


def acquire_run_lock(run_dir: str | os.PathLike) -> RunLock:
    """Take (or take again, within this process) the lock of ``run_dir``; pair with :func:`release_run_lock`.

    Raises:
        RunLockedError: if another process holds it.
    """
    key = Path(run_dir).resolve()
    lock = _HELD.get(key)
    if lock is None:
        lock = RunLock(run_dir)
        lock.acquire()
        _HELD[key] = lock
    lock.holders += 1
    return lock


def release_run_lock(lock: RunLock | None) -> None:
    """Release one hold of ``lock``; the lock is dropped when its last holder in this process releases it."""
    if lock is None or lock.holders == 0:
        return
    lock.holders -= 1
    if lock.holders == 0:
        lock.release()
        _HELD.pop(lock.run_dir.resolve(), None)
