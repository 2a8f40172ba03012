"""Atomic file writes: the one way this project writes a file that must never be seen half-written.

Everything is written to ``NAME.tmp`` beside the target, flushed to disk, then renamed over ``NAME``
(``os.replace`` is atomic on POSIX within one filesystem) and the folder entry is synced. A crash leaves
either the old file or the new one, never a torn one; the temporary file is removed if writing fails.
Checkpoints, exports, shard indexes, run summaries, reports and every output picture go through
:func:`atomic_open`::

    with atomic_open(path) as f:          # binary by default
        torch.save(state, f)
    write_text(path, json.dumps(summary))

A write that fails because of the filesystem (a full disk, a quota, a read-only mount) raises
:class:`WriteError`, an ``OSError`` with the errno of the cause and a message naming the final file,
e.g. ``[Errno 28] cannot write 'runs/x/checkpoints/iter_000000010.pt': No space left on device``, even
when the writer (``torch.save``) wrapped the ``OSError`` in an exception of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import IO, Iterator

TMP_SUFFIX = ".tmp"


class WriteError(OSError):
    """A file could not be written; ``errno`` is the cause's, the message names the final file."""


def os_error_cause(exc: BaseException) -> OSError | None:
    """The first ``OSError`` in ``exc`` and its chain of causes/contexts (``torch.save`` raises a
    ``RuntimeError`` whose context is the ``OSError`` of the failed write), or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _fsync_dir(directory: Path) -> None:
    """Persist a rename (best effort: not every platform or filesystem can open a folder)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open ``path.tmp`` for writing; on a clean exit flush, fsync and rename it to ``path``.

    Args:
        path: the final file.
        mode: ``"wb"`` (default) or ``"w"`` (text, UTF-8).

    Raises:
        ValueError: for a mode that does not write from scratch.
        WriteError: when the filesystem refuses the write (names ``path``; ``errno`` of the cause). The
            temporary file is removed and an existing ``path`` is left as it was.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except WriteError:
        raise
    except Exception as exc:
        cause = os_error_cause(exc)
        if cause is None or cause.errno is None:
            raise
        raise WriteError(cause.errno, f"cannot write '{path}': {cause.strerror or cause}") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def remove_stale_tmp(directory: str | os.PathLike) -> list[Path]:
    """Delete the ``*.tmp`` files :func:`atomic_open` left in ``directory`` when its process was killed
    mid-write (call it only while no other process writes there). Returns the files removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for p in sorted(directory.glob(f"*{TMP_SUFFIX}")):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_open(path) as f:
        f.write(data)
    return Path(path)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoint and export integrity checks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
