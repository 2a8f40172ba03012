"""Atomic file writes: the one way this project writes a file that must never be seen half-written.

Everything is written to ``NAME.tmp`` beside the target, flushed to disk, then renamed over ``NAME``
(``os.replace`` is atomic on POSIX within one filesystem). A crash leaves either the old file or the new
one, never a torn one; the temporary file is removed if writing fails. Checkpoints, exports, shard
indexes, run summaries, reports and every output picture go through :func:`atomic_open`::

    with atomic_open(path) as f:          # binary by default
        torch.save(state, f)
    write_text(path, json.dumps(summary))
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open ``path.tmp`` for writing; on a clean exit flush, fsync and rename it to ``path``.

    Args:
        path: the final file.
        mode: ``"wb"`` (default) or ``"w"`` (text, UTF-8).

    Raises:
        ValueError: for a mode that does not write from scratch; OSError from the filesystem.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
