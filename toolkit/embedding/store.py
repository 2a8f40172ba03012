"""The embedding store: a folder of vector chunks and Parquet metadata chunks, written resumably.

Layout of an ``--out`` folder of ``python -m toolkit.embed``::

    manifest.json           settings (encoder, preprocessing, pooling, dtype, sources, chunk size), dim, and
                            ``complete`` / ``rows`` once every chunk is written
    vectors-{i:06d}.npy     (n_i, D) float32 or float16: rows i * chunk ... of the deterministic image order
    meta-{i:06d}.parquet    the same n_i rows' metadata (:data:`COLUMNS`)

Every file goes through :func:`toolkit.files.atomic_open` (``NAME.tmp`` then a rename). A chunk is *complete*
when its Parquet file exists: the vectors are written first and the metadata last, so a ``kill -9`` leaves
at most a ``.tmp`` file or a vector chunk without metadata, both removed when the run starts again
(:meth:`EmbeddingWriter.open`), and the run then continues with the first incomplete chunk. Chunks hold
``chunk`` rows each (the last may hold fewer), so a resumed run writes exactly the rows an uninterrupted
one would, in the same batches.

Metadata columns (one row per image): ``row`` (int64, position in the store and the Faiss id),
``sample_token``, ``camera``, ``timestamp_us`` (int64, the camera's capture time), ``scene``, ``class``
(the sample's most frequent annotation category, first two levels such as ``vehicle.car``; ``none``
without annotations), ``source`` (``shard`` or ``file``), ``file`` (absolute path of the shard or image
file), ``key`` (the sample key inside a shard, else ""), ``member`` (the tar member, else ""), ``width``,
``height`` (the stored image's size, px).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from toolkit.files import atomic_open, remove_stale_tmp, write_text

MANIFEST = "manifest.json"
FORMAT = "toolkit.embedding/1"
COLUMNS = ("row", "sample_token", "camera", "timestamp_us", "scene", "class", "source", "file", "key", "member",
           "width", "height")
_INT_COLUMNS = ("row", "timestamp_us", "width", "height")
_CHUNK_RE = re.compile(r"^meta-(\d{6})\.parquet$")


class StoreError(ValueError):
    """An embedding folder that is missing, incomplete, damaged or made with other settings (names it)."""


def _vectors_path(root: Path, i: int) -> Path:
    return root / f"vectors-{i:06d}.npy"


def _meta_path(root: Path, i: int) -> Path:
    return root / f"meta-{i:06d}.parquet"


def _table(rows: list[dict]):
    import pyarrow as pa

    return pa.table({c: pa.array([r[c] for r in rows], type=pa.int64() if c in _INT_COLUMNS else pa.string())
                     for c in COLUMNS})


class EmbeddingWriter:
    """Writes chunks into an embedding folder, resuming one made with the same ``settings``.

    Args:
        root: the folder (created).
        settings: what defines the embeddings (encoder file and its SHA-256, preprocessing, pooling, dtype,
            sources, chunk size); a folder holding chunks made with other settings is refused.
    """

    def __init__(self, root: str | os.PathLike, settings: dict):
        self.root = Path(root)
        self.settings = settings
        self.done: set[int] = set()

    def open(self) -> set[int]:
        """Create or check the folder, tidy what a killed run left, return the indices of complete chunks.

        Raises:
            StoreError: the folder holds embeddings made with other settings, or is not an embedding folder.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / MANIFEST
        if path.exists():
            try:
                manifest = json.loads(path.read_text())
            except ValueError as exc:
                raise StoreError(f"'{path}' is not valid JSON ({exc})") from exc
            if manifest.get("settings") != self.settings:
                theirs, mine = manifest.get("settings") or {}, self.settings
                diff = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
                raise StoreError(f"--out '{self.root}' holds embeddings made with other settings (differing: "
                                 f"{', '.join(diff)}); give another --out or delete it")
        elif any(self.root.iterdir()):
            raise StoreError(f"--out '{self.root}' is not empty and has no {MANIFEST}: not an embedding folder")
        remove_stale_tmp(self.root)
        self.done = {int(m.group(1)) for p in self.root.iterdir() if (m := _CHUNK_RE.match(p.name))}
        for p in self.root.glob("vectors-*.npy"):
            if int(p.stem.split("-")[1]) not in self.done:  # vectors of a chunk whose metadata never came
                p.unlink()
        for i in sorted(self.done):
            if not _vectors_path(self.root, i).exists():
                raise StoreError(f"'{_meta_path(self.root, i)}' has no vectors file beside it: the folder is damaged")
        self._manifest(complete=False)
        return set(self.done)

    def _manifest(self, complete: bool, rows: int | None = None, dim: int | None = None) -> None:
        data = {"format": FORMAT, "settings": self.settings, "complete": complete}
        if rows is not None:
            data.update(rows=rows, dim=dim, chunks=len(self.done))
        write_text(self.root / MANIFEST, json.dumps(data, indent=1))

    def write_chunk(self, i: int, vectors: np.ndarray, rows: list[dict]) -> None:
        """Write chunk ``i``: the (n, D) vectors, then its n metadata rows (the commit)."""
        import pyarrow.parquet as pq

        if len(vectors) != len(rows):
            raise ValueError(f"chunk {i}: {len(vectors)} vectors but {len(rows)} metadata rows")
        with atomic_open(_vectors_path(self.root, i)) as f:
            np.save(f, vectors)
        with atomic_open(_meta_path(self.root, i)) as f:
            pq.write_table(_table(rows), f)
        self.done.add(i)

    def finish(self) -> "EmbeddingStore":
        """Mark the folder complete (rows and dim in the manifest) and return it as a store."""
        self._manifest(complete=False)
        store = EmbeddingStore(self.root, require_complete=False)
        self._manifest(complete=True, rows=store.rows, dim=store.dim)
        return EmbeddingStore(self.root)


class EmbeddingStore:
    """Read an embedding folder: ``vectors()`` (N, D) float32, ``table()`` (pyarrow), ``manifest``.

    Raises:
        StoreError: a missing folder or manifest, an incomplete export (``require_complete``), or chunks
            that do not line up (naming the file).
    """

    def __init__(self, root: str | os.PathLike, require_complete: bool = True):
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise StoreError(f"'{self.root}' is not an embedding folder (no {MANIFEST}; made by python -m toolkit.embed)")
        try:
            self.manifest = json.loads(path.read_text())
        except ValueError as exc:
            raise StoreError(f"'{path}' is not valid JSON ({exc})") from exc
        if require_complete and not self.manifest.get("complete"):
            raise StoreError(f"'{self.root}' is an unfinished export: run the same python -m toolkit.embed "
                             "command again to complete it")
        self.chunks = sorted(int(m.group(1)) for p in self.root.iterdir() if (m := _CHUNK_RE.match(p.name)))
        if self.chunks != list(range(len(self.chunks))):
            raise StoreError(f"'{self.root}' misses metadata chunks (found {self.chunks[:5]}...)")
        self._vectors: np.ndarray | None = None
        self._table = None

    @property
    def settings(self) -> dict:
        return self.manifest.get("settings", {})

    def vectors(self) -> np.ndarray:
        """(N, D) float32, rows in store order."""
        if self._vectors is None:
            parts = [np.load(_vectors_path(self.root, i)) for i in self.chunks]
            dims = {p.shape[1] for p in parts if p.ndim == 2}
            if any(p.ndim != 2 for p in parts) or len(dims) > 1:
                raise StoreError(f"'{self.root}': vector chunks of different shapes {sorted(dims)}")
            self._vectors = (np.concatenate(parts) if parts else np.zeros((0, 0))).astype(np.float32)
        return self._vectors

    def table(self):
        """The metadata (pyarrow Table, :data:`COLUMNS`), rows in store order."""
        if self._table is None:
            import pyarrow as pa
            import pyarrow.parquet as pq

            tables = [pq.read_table(_meta_path(self.root, i)) for i in self.chunks]
            self._table = pa.concat_tables(tables) if tables else _table([])
            if self._table.num_rows != len(self.vectors()):
                raise StoreError(f"'{self.root}': {self._table.num_rows} metadata rows but {len(self.vectors())} vectors")
        return self._table

    def records(self) -> list[dict]:
        """The metadata as one dict per row."""
        return self.table().to_pylist()

    @property
    def rows(self) -> int:
        return len(self.vectors())

    @property
    def dim(self) -> int:
        v = self.vectors()
        return int(v.shape[1]) if v.ndim == 2 and len(v) else 0
