"""Atomic WebDataset shard writing.

Shards are written by ``webdataset.ShardWriter`` under a temporary name (``NAME.tar.tmp``) and
renamed to ``NAME.tar`` when complete, so a crash never leaves a truncated ``.tar`` that a brace
pattern would pick up. ``info.json`` beside the shards (written atomically by :mod:`toolkit.files`)
records the shard list, the sample counts and the arguments that built them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import webdataset as wds

from toolkit.files import write_text


class AtomicShardWriter:
    """Write samples to ``{out}/{prefix}-%06d.tar`` shards, each renamed into place when closed.

    Args:
        out: output folder (created).
        prefix: shard name prefix (``train``, ``val``).
        maxcount: samples per shard at most.
        maxsize: bytes per shard at most (a shard closes once it reaches this size).

    Attributes:
        shards: names of the completed shards, in order; counts: samples in each.
    """

    def __init__(self, out: str | os.PathLike, prefix: str, maxcount: int = 1000, maxsize: float = 1e9):
        if maxcount < 1 or maxsize <= 0:
            raise ValueError(f"maxcount must be >= 1 and maxsize > 0, got {maxcount} and {maxsize}")
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.shards: list[str] = []
        self.counts: list[int] = []
        self._count = 0
        # a fixed integer mtime: no per-member PAX header (faster to read) and byte-reproducible shards
        self._writer = wds.ShardWriter(str(self.out / f"{prefix}-%06d.tar.tmp"), maxcount=maxcount,
                                       maxsize=maxsize, post=self._finish, verbose=0, mtime=0)

    def _finish(self, tmp_name: str) -> None:
        final = tmp_name[: -len(".tmp")]
        os.replace(tmp_name, final)
        self.shards.append(os.path.basename(final))
        self.counts.append(self._count)
        self._count = 0

    def write(self, sample: dict) -> None:
        """Write one sample (a dict with ``__key__`` and bytes values)."""
        self._writer.write(sample)  # a full shard is closed (and renamed) before this sample
        self._count += 1

    def close(self) -> None:
        self._writer.close()
        # ShardWriter opens its first stream eagerly: with no samples at all, drop the empty shard
        if self.counts and self.counts[-1] == 0:
            os.remove(self.out / self.shards.pop())
            self.counts.pop()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:  # leave no half-written shard behind
            w = self._writer
            if w.tarstream is not None:
                w.tarstream.close()
                w.tarstream = None
            if w.fname and os.path.exists(w.fname):
                os.remove(w.fname)


def brace_pattern(prefix: str, n: int) -> str:
    """WebDataset brace pattern for shards ``prefix-000000.tar`` ... ``prefix-{n-1:06d}.tar``."""
    if n < 1:
        raise ValueError("no shards")
    return f"{prefix}-000000.tar" if n == 1 else f"{prefix}-{{000000..{n - 1:06d}}}.tar"


def write_info(out: str | os.PathLike, info: dict) -> Path:
    """Write ``info.json`` into ``out`` atomically (:func:`toolkit.files.write_text`)."""
    return write_text(Path(out) / "info.json", json.dumps(info, indent=1))
