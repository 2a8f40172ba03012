"""WebDataset input pipelines: the one way training and evaluation read data.

Training (:func:`train_loader`): an *infinite*, deterministic stream per (rank, worker), so every rank
runs the same number of steps whatever the shard count (WebDataset's resampled-shards recipe, as in
open_clip; the engine counts steps, which replaces ``with_epoch``)::

    resampled shard names (seeded by seed, rank, worker) -> tar samples -> shuffle buffer (raw bytes)
      -> fast-forward (resume) -> task decode (per-sample RNG) -> batch -> DataLoader(batch_size=None)

Local shards are parsed by this module's own tar reader (:func:`_read_local_tar`: the members and order
``tarfile``'s stream mode gives webdataset, only the task's members read, the others seeked over); the
profile of the training loader had 70 % of its time in ``tarfile``. URLs and ``pipe:`` use webdataset's.

Evaluation (:func:`eval_loader`): one finite pass, shards split by node (rank) and by worker, so each
sample is read exactly once across all ranks and workers.

Corrupt data never stops a run: an unreadable shard, a truncated tar or a sample the task cannot
decode is skipped, warned about (first few per worker) and *counted*. Data that is not the task's
does: :func:`check_shards` opens every local shard of a spec before training and requires the task's
members in its first sample (an empty tar or another task's shards is a one-line
:class:`ShardListError`), and while streaming, :data:`MAX_EMPTY_SHARDS` shards in a row without a
sample holding the task's members raise :class:`NoSamplesError` (an infinite resampled stream would
otherwise spin forever), as do ``max_consecutive`` unreadable or undecodable samples in a row
(:class:`CorruptDataError`). Both loaders return a
:class:`Batches` iterable: it yields plain batch dicts and keeps the running count of skipped samples
in ``.skipped`` (inside the pipeline each batch travels as ``(batch, skipped_before_it)`` so counts from
worker processes reach the consumer; nothing is added to the batch).

Exact resume: the stream is a pure function of (seed, rank, worker, position), and augmentation
randomness is drawn from a per-sample generator, so skipping the first ``k`` samples before decoding
(``skip_batches``) reproduces the uninterrupted run's batches exactly. Skipping reads but does not
decode the skipped samples. Do not pass these loaders to ``accelerator.prepare`` (it would re-shard or
broadcast the stream); move batches with ``.to(device)``.
"""

from __future__ import annotations

import glob
import hashlib
import os
import random
import re
import signal
import sys
import tarfile
from itertools import islice
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import default_collate

DecodeFn = Callable[[dict, np.random.Generator], dict]


class ShardListError(FileNotFoundError):
    """A shard specification that matches no file, or shards without the task's members."""

#: shards opened in a row without one sample holding the task's members before the stream gives up
MAX_EMPTY_SHARDS = 50


def expand_shards(spec: str | list[str], must_exist: bool = True) -> list[str]:
    """Expand a shard specification into a list of paths or URLs.

    Accepts WebDataset brace notation (``train-{000000..000009}.tar``), ``::``-joined sources, shell
    globs (``train-*.tar``) and lists of those.

    Raises:
        ShardListError: naming the specification when nothing matches, or a local file is missing.
    """
    specs = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for s in specs:
        for url in wds.shardlists.expand_urls(os.path.expanduser(s)):
            if any(c in url for c in "*?[") and "://" not in url:
                matches = sorted(glob.glob(url))
                if not matches:
                    raise ShardListError(f"shard pattern '{s}' matches no file")
                out.extend(matches)
            else:
                out.append(url)
    if not out:
        raise ShardListError(f"shard specification '{spec}' is empty")
    if must_exist:
        missing = [u for u in out if "://" not in u and not u.startswith("pipe:") and not os.path.exists(u)]
        if missing:
            raise ShardListError(f"{len(missing)} of {len(out)} shards of '{spec}' do not exist, e.g. '{missing[0]}'")
    return out


def _stage(fn, *args):
    """A picklable WebDataset pipeline stage ``src -> fn(src, *args)``."""
    return wds.filters.pipelinefilter(fn)(*args)


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def _worker(skip_batches: int = 0) -> tuple[int, int]:
    """(stream id, number of workers) of the calling DataLoader worker.

    The loader takes batch i from worker i % W. A loader resumed after ``skip_batches`` batches starts
    again at worker 0, so its worker w plays the stream of worker (w + skip_batches) % W of the
    uninterrupted run; that keeps the batch order identical across a resume.
    """
    info = torch.utils.data.get_worker_info()
    if info is None:
        return 0, 1
    return (info.id + skip_batches) % info.num_workers, info.num_workers


class CorruptDataError(RuntimeError):
    """Too many consecutive unreadable shards or samples: the data is not what the config says."""


class NoSamplesError(CorruptDataError):
    """A stream or a pass that yields no usable sample: the message names the shards and the members."""


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def _first_sample(url: str) -> tuple[str | None, set[str]]:
    """(key, member extensions) of the first sample of a tar (streamed: only its first members are read).

    Raises:
        OSError, tarfile.TarError: if the file cannot be read as a tar.
    """
    from webdataset.tariterators import base_plus_ext

    key, exts = None, set()
    with tarfile.open(url, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            prefix, ext = base_plus_ext(member.name)
            if prefix is None:
                continue
            if key is not None and prefix != key:
                break
            key = prefix
            exts.add(ext.lower())
    return key, exts


def _members_note(url: str, keys) -> str:
    """What the first sample of ``url`` holds, for error messages."""
    if not _is_local(url):
        return f"'{url}'"
    try:
        key, exts = _first_sample(url)
    except (OSError, tarfile.TarError) as exc:
        return f"'{url}' cannot be read as a tar ({exc})"
    if key is None:
        return f"'{url}' is empty (no member)"
    missing = sorted(set(keys or ()) - exts)
    return f"'{url}' has no {', '.join(missing) or 'usable member'} (its first sample '{key}' holds {', '.join(sorted(exts))})"


def check_shards(spec: str | list[str], keys: tuple[str, ...] | None, what: str = "data.train") -> list[str]:
    """Open every local shard of ``spec`` and check its first sample holds the members ``keys``.

    Remote shards (URLs, ``pipe:``) are not opened; the stream's own bound covers them. A shard that
    cannot be read at all is left to the stream (skipped and counted there) unless none can.

    Args:
        spec: shard specification; keys: the task's ``shard_keys`` (None: any member will do).
        what: the config key, for the message.

    Returns:
        The shard list.

    Raises:
        ShardListError: one line naming ``what``, the spec, a bad shard and the missing members, if a
            shard is empty or lacks members, or no shard can be read; or if ``spec`` matches nothing.
    """
    urls = expand_shards(spec)
    bad, unreadable, local = [], [], 0
    for url in filter(_is_local, urls):
        local += 1
        try:
            key, exts = _first_sample(url)
        except (OSError, tarfile.TarError):
            unreadable.append(url)
            continue
        if key is None or (keys and not set(keys) <= exts):
            bad.append(url)
    if bad:
        raise ShardListError(f"{what} '{spec}': {len(bad)} of {len(urls)} shards lack the task's members "
                             f"({', '.join(keys or ('any member',))}): {_members_note(bad[0], keys)}")
    if local and len(unreadable) == local:
        raise ShardListError(f"{what} '{spec}': no shard can be read as a tar: {_members_note(unreadable[0], keys)}")
    return urls


class SkipCounter:
    """Exception handler for WebDataset stages that warns, counts and continues.

    One instance is shared by the stages of a pipeline; each worker process holds its own copy. After
    ``max_consecutive`` failures without a single good sample it raises :class:`CorruptDataError`
    (an infinite resampled stream of corrupt data would otherwise spin silently).
    """

    def __init__(self, max_warnings: int = 5, max_consecutive: int = 200):
        self.count = 0
        self.consecutive = 0
        self.max_warnings = max_warnings
        self.max_consecutive = max_consecutive

    def ok(self) -> None:
        self.consecutive = 0

    def unusable(self, what: str) -> None:
        """A sample that is not an error but gives nothing (a decode that returned None): not counted
        as skipped, but it does not end a run of failures either.

        Raises:
            CorruptDataError: after ``max_consecutive`` failures in a row."""
        self.consecutive += 1
        if self.consecutive > self.max_consecutive:
            raise CorruptDataError(f"{self.consecutive} consecutive shards or samples without a usable sample; "
                                   f"last: {what}")

    def __call__(self, exn: BaseException) -> bool:
        self.count += 1
        self.consecutive += 1
        if self.consecutive > self.max_consecutive:
            raise CorruptDataError(f"{self.consecutive} consecutive unreadable shards or samples; last: "
                                   f"{type(exn).__name__}: {str(exn)[:300]}")
        if self.count <= self.max_warnings:
            print(f"[data] skipped corrupt data ({type(exn).__name__}: {str(exn)[:300]})", file=sys.stderr)
        elif self.count == self.max_warnings + 1:
            print("[data] more corrupt data skipped; further warnings suppressed (see data/skipped)", file=sys.stderr)
        return True

    def take(self) -> int:
        n, self.count = self.count, 0
        return n


class _ResampledShards(torch.utils.data.IterableDataset):
    """Infinite stream of ``{"url": ...}`` drawn with replacement, seeded by (seed, rank, worker)."""

    def __init__(self, urls: list[str], seed: int, rank: int, skip_batches: int = 0):
        super().__init__()
        self.urls, self.seed, self.rank, self.skip_batches = urls, seed, rank, skip_batches

    def __iter__(self):
        worker, _ = _worker(self.skip_batches)
        rng = random.Random(_seed(self.seed, self.rank, worker, "shards"))
        while True:
            yield {"url": self.urls[rng.randrange(len(self.urls))]}


def _shuffle(src: Iterable[dict], bufsize: int, seed: int, rank: int, skip_batches: int = 0) -> Iterator[dict]:
    worker, _ = _worker(skip_batches)
    if bufsize <= 1:
        yield from src
        return
    rng = random.Random(_seed(seed, rank, worker, "shuffle"))
    buf: list[dict] = []
    for sample in src:
        buf.append(sample)
        if len(buf) < bufsize:
            continue
        k = rng.randrange(len(buf))
        buf[k], buf[-1] = buf[-1], buf[k]
        yield buf.pop()
    rng.shuffle(buf)
    yield from buf


class _KeepKeys:
    """Picklable ``select_files`` predicate: keep members whose extension is in ``keys``."""

    def __init__(self, keys):
        self.keys = frozenset(keys)

    def __call__(self, fname: str) -> bool:
        return fname.split(".", 1)[-1].lower() in self.keys


_BLOCK = 512
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: members like __meta__ are not sample data


def _octal(field: bytes, what: str, url: str) -> int:
    """A tar header number: NUL/space-terminated octal, or GNU base-256 (first byte & 0x80)."""
    if field and field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise tarfile.HeaderError(f"{url}: invalid {what} field {field!r} in a tar header") from None


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header, if any."""
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        if key == b"path":
            return value.decode("utf-8")
        pos += length
    return None


def _read_local_tar(url: str, select: Callable[[str], bool] | None) -> Iterator[tuple[str, bytes]]:
    """``(member name, bytes)`` of the regular members of a local, uncompressed tar, in file order,
    reading only the members ``select`` keeps (the others are seeked over, never read).

    The same members and order as ``tarfile`` in stream mode gives webdataset (ustar, GNU long
    names and pax ``path`` records understood; meta members ``__*__`` and non-files skipped), at a
    fraction of the cost: one 512-byte read per header and one read per selected member.

    Raises:
        tarfile.ReadError: a file that ends inside a member or header (a truncated shard).
        tarfile.HeaderError: a header whose checksum or numbers are invalid (not a tar, or damaged).
    """
    with open(url, "rb", buffering=0) as f:
        file_size = os.fstat(f.fileno()).st_size
        if url.endswith((".gz", ".tgz", ".bz2", ".xz", ".zst")):
            raise tarfile.ReadError(f"{url}: compressed tar is not read by the local reader")
        pos, long_name = 0, None
        while True:
            header = f.read(_BLOCK)
            if not header:
                return  # end of file at a member boundary, as tarfile accepts
            if len(header) < _BLOCK:
                raise tarfile.ReadError(f"{url}: unexpected end of data in a tar header at byte {pos}")
            if header.count(0) == _BLOCK:
                return  # end-of-archive block
            stored = _octal(header[148:156], "checksum", url)
            if stored != 256 + sum(header[:148]) + sum(header[156:]):
                raise tarfile.HeaderError(f"{url}: bad tar header checksum at byte {pos}")
            size = _octal(header[124:136], "size", url)
            kind = header[156:157]
            padded = (size + _BLOCK - 1) // _BLOCK * _BLOCK
            pos += _BLOCK
            if pos + size > file_size:
                raise tarfile.ReadError(f"{url}: unexpected end of data: member at byte {pos - _BLOCK} needs "
                                        f"{size} bytes, the file ends at {file_size}")
            if kind in (b"L", b"x"):  # GNU long name / pax header: applies to the next member
                data = f.read(padded)[:size]
                long_name = data.rstrip(b"\0").decode("utf-8") if kind == b"L" else (_pax_path(data) or long_name)
                pos += padded
                continue
            if long_name is not None:
                name, long_name = long_name, None
            else:
                name = header[:100].split(b"\0", 1)[0].decode("utf-8")
                if header[257:262] == b"ustar" and header[345]:
                    name = header[345:500].split(b"\0", 1)[0].decode("utf-8") + "/" + name
            wanted = (kind in (b"0", b"\0", b"7") and not _META.match(name)
                      and not ("/" not in name and name.startswith("__") and name.endswith("__"))
                      and (select is None or select(name)))
            if wanted:
                data = f.read(size)
                if len(data) < size:
                    raise tarfile.ReadError(f"{url}: unexpected end of data in member '{name}'")
                if padded > size:
                    f.seek(padded - size, 1)
                yield name, data
            elif padded:
                f.seek(padded, 1)
            pos += padded


def _local_files(items: Iterable[dict], handler: SkipCounter, select, bufsize: int) -> Iterator[dict]:
    """webdataset's ``url_opener`` + ``tar_file_expander``: ``{"fname", "data", "__url__"}`` per member and
    ``{}`` at the end of each shard, the same exceptions routed to ``handler`` (the shard is then left, as
    webdataset does); local plain tars go through :func:`_read_local_tar`, anything else through webdataset."""
    from webdataset import tariterators

    for item in items:
        url = item["url"]
        if not _is_local(url) or url.endswith((".gz", ".tgz", ".bz2", ".xz", ".zst")):
            streams = tariterators.url_opener([item], handler=handler, bufsize=bufsize)
            yield from tariterators.tar_file_expander(streams, handler=handler, select_files=select)
            continue
        try:
            for name, data in _read_local_tar(url, select):
                yield {"fname": name, "data": data, "__url__": url}
            yield {}
        except Exception as exn:  # noqa: BLE001 - as webdataset: the handler decides (count and skip)
            exn.args = exn.args + (url,)
            if not handler(exn):
                break


def _tar_samples(src: Iterable[dict], handler: SkipCounter, keys=None, bufsize: int = 1 << 20,
                 max_empty: int = MAX_EMPTY_SHARDS) -> Iterator[dict]:
    """webdataset's ``tarfile_to_samples`` keeping only the members whose extension is in ``keys``
    (None = all): the others are skipped while streaming (seeked over in local files, never read) and
    never reach the shuffle buffer. Local tars are parsed by :func:`_read_local_tar` (~6x faster than
    ``tarfile``'s stream mode, the profile's largest cost); URLs and ``pipe:`` go through webdataset
    with a 1 MiB read buffer.

    Raises:
        NoSamplesError: when ``max_empty`` shards in a row gave no sample (empty tars, another task's
            shards), naming them and what they hold.
    """
    from webdataset import tariterators

    opened: list[str] = []  # shards opened since the last sample came out

    def watched(urls):
        for item in urls:
            opened.append(item["url"])
            if len(opened) > max_empty:
                names = sorted(set(opened))
                raise NoSamplesError(f"{len(opened) - 1} shards in a row gave no sample with the members "
                                     f"{', '.join(keys or ('any',))} ({len(names)} distinct, e.g. "
                                     f"{_members_note(names[0], keys)}): are these the task's shards?")
            yield item

    files = _local_files(watched(src), handler, _KeepKeys(keys) if keys else None, bufsize)
    for sample in tariterators.group_by_keys(files, handler=handler):
        opened.clear()
        yield sample


def _worker_share(skip_batches: int) -> int:
    """Batches of the first ``skip_batches`` loader batches that came from this worker: the loader
    takes batch i from worker i % W."""
    worker, workers = _worker(skip_batches)
    return (skip_batches - worker + workers - 1) // workers if skip_batches > worker else 0


def _fast_forward(src: Iterable[dict], skip_batches: int, batch_size: int) -> Iterator[dict]:
    """Drop (unread-decoded) the raw samples of this worker's share of the first ``skip_batches``."""
    it = iter(src)
    for _ in islice(it, _worker_share(skip_batches) * batch_size):
        pass
    yield from it


def _decode(src: Iterable[dict], fn: DecodeFn, seed: int, rank: int, counter: SkipCounter,
            skip_batches: int = 0, batch_size: int = 0) -> Iterator[dict]:
    """Apply the task's decode with a per-sample generator seeded by the sample's stream position,
    so randomness does not depend on whether earlier samples were decoded or fast-forwarded."""
    worker, _ = _worker(skip_batches)
    index = _worker_share(skip_batches) * batch_size
    for sample in src:
        rng = np.random.default_rng(_seed(seed, rank, worker, "sample", index))
        index += 1
        try:
            out = fn(sample, rng)
        except Exception as exn:  # noqa: BLE001 - any decode failure is a counted skip
            key = sample.get("__key__", "?")
            exn.args = (f"{sample.get('__url__', '?')}: sample '{key}': {exn}",)
            counter(exn)
            continue
        if out is None:
            counter.unusable(f"{sample.get('__url__', '?')}: sample '{sample.get('__key__', '?')}' decoded to nothing")
            continue
        counter.ok()
        yield out


def _batch(src: Iterable[dict], batch_size: int, counter: SkipCounter, partial: bool) -> Iterator[tuple[dict, int]]:
    """Collate ``batch_size`` samples into ``(batch, skips counted before it was handed on)``.

    One finished batch is held back until the next one is complete (or the stream ends), so skips that
    happen after the last sample of a finite stream still reach the consumer.
    """
    buf: list[dict] = []
    pending = None
    for sample in src:
        buf.append(sample)
        if len(buf) == batch_size:
            if pending is not None:
                yield pending, counter.take()
            pending, buf = default_collate(buf), []
    if buf and partial:
        if pending is not None:
            yield pending, counter.take()
        pending = default_collate(buf)
    if pending is not None:
        yield pending, counter.take()


class Batches:
    """The batches of a loader, with the running count of skipped (corrupt) samples in ``skipped``.

    Iterating yields batch dicts (stacked tensors). ``skipped`` counts, across all worker processes,
    the samples and shards skipped before the batches yielded so far (for a finished finite pass: all).
    Closing the iterator (``it.close()``, or finishing a finite pass) shuts its worker processes down at
    once: an infinite stream is never exhausted, and persistent workers left to the interpreter's exit
    would keep the process waiting for them.
    """

    def __init__(self, loader: torch.utils.data.DataLoader):
        self.loader = loader
        self.skipped = 0

    def __iter__(self) -> Iterator[dict]:
        it = iter(self.loader)
        try:
            for batch, skipped in it:
                self.skipped += int(skipped)
                yield batch
        finally:
            if hasattr(it, "_shutdown_workers"):  # a multi-process iterator
                it._shutdown_workers()


def train_loader(shards: str | list[str], decode: DecodeFn, batch_size: int, *, seed: int, rank: int = 0,
                 num_workers: int = 2, shuffle_buffer: int = 1000, skip_batches: int = 0,
                 keys: tuple[str, ...] | None = None) -> Batches:
    """Infinite training loader: ``iter()`` of it gives an endless sequence of batches (dicts of stacked tensors).

    Args:
        shards: shard specification (see :func:`expand_shards`).
        decode: ``decode(sample_bytes_dict, rng) -> dict of arrays`` from the task; may raise on bad data.
        batch_size: samples per batch on this rank.
        seed, rank: the stream is a pure function of (seed, rank, worker, position).
        num_workers: DataLoader worker processes (0 = in-process).
        shuffle_buffer: raw samples held for shuffling (before decode, so the buffer holds compact bytes).
        skip_batches: batches of this loader already consumed (exact resume).
        keys: sample members (extensions such as ``range.npy``) to read; None = all.

    Raises:
        ShardListError: if ``shards`` matches nothing.
    """
    urls = expand_shards(shards)
    counter = SkipCounter()
    pipeline = wds.DataPipeline(
        _ResampledShards(urls, seed, rank, skip_batches),
        _stage(_tar_samples, counter, keys),
        _stage(_shuffle, shuffle_buffer, seed, rank, skip_batches),
        _stage(_fast_forward, skip_batches, batch_size),
        _stage(_decode, decode, seed, rank, counter, skip_batches, batch_size),
        _stage(_batch, batch_size, counter, False),
    )
    return Batches(torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=num_workers,
                                               worker_init_fn=_worker_init, persistent_workers=num_workers > 0,
                                               prefetch_factor=2 if num_workers > 0 else None))


def _worker_init(_worker_id: int) -> None:
    """DataLoader workers ignore stop signals: a scheduler signals every process of a job step, and the
    training process must stay alive to write its checkpoint; it shuts its workers down itself."""
    for sig in ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2"):
        if hasattr(signal, sig):
            signal.signal(getattr(signal, sig), signal.SIG_IGN)


def _split_by_rank(src: Iterable, rank: int, world_size: int) -> Iterator:
    yield from islice(src, rank, None, world_size)


def eval_loader(shards: str | list[str], decode: DecodeFn, batch_size: int, *, rank: int = 0, world_size: int = 1,
                num_workers: int = 0, seed: int = 0, keys: tuple[str, ...] | None = None) -> Batches:
    """One finite pass over ``shards``, split by node (rank) then by worker; last batch may be short.

    Every sample is read exactly once across all ranks and workers. With fewer shards than
    ``world_size * num_workers`` some workers get none, which is fine (they yield nothing).

    Raises:
        ShardListError: if ``shards`` matches nothing.
    """
    urls = expand_shards(shards)
    counter = SkipCounter()
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        _stage(_split_by_rank, rank, world_size),
        wds.split_by_worker,
        _stage(_tar_samples, counter, keys),
        _stage(_decode, decode, seed, rank, counter),
        _stage(_batch, batch_size, counter, True),
    )
    return Batches(torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=num_workers,
                                               worker_init_fn=_worker_init))
