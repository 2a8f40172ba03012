"""Faiss indexes over an embedding store: exact flat, HNSW and IVF-PQ, all by inner product.

Vectors are L2-normalised first by default (``faiss.normalize_L2``), so inner product = cosine similarity;
ids are the store's rows. Types (Faiss wiki, "Guidelines to choose an index"; ``shared/notes`` section 4):

* ``flat``: ``IndexFlatIP``, exact, no training; the right choice up to ~1M vectors on a CPU.
* ``hnsw``: ``IndexHNSWFlat(d, M, METRIC_INNER_PRODUCT)``, ``efConstruction`` at build, ``efSearch`` at
  query time; no training; (4 d + 8 M) bytes per vector (plus the graph's level lists).
* ``ivfpq``: ``IVF{nlist},PQ{m}x{nbits}``: k-means coarse quantizer with ``nlist`` lists (``nprobe``
  visited per query) and product quantization into ``m`` codes of ``nbits`` (m nbits / 8 bytes per vector +
  an 8-byte id); ``refine`` > 0 adds ``IndexRefineFlat``: the ``refine x k`` PQ candidates are re-ranked
  with the exact vectors (which it keeps: + 4 d bytes per vector), the usual way to high recall.

Training limits (Faiss raises or warns; here they are checked first, one line each, :class:`IndexSizeError`):
IVF k-means needs at least ``nlist`` training vectors (``'nx >= k' failed``) and warns below 39 nlist; a PQ
sub-quantizer needs at least ``2^nbits`` (256 for 8 bits; warns below 39 x 256 = 9,984); ``m`` must divide the
dimension. Below the hard limits this module refuses, below the 39x ones it warns (stderr).

Saved as ``INDEX`` (``faiss.serialize_index`` bytes, written atomically) and ``INDEX.json`` (type,
parameters, the embedding folder, rows, dim, normalisation, build time).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from toolkit.files import write_bytes, write_text

TYPES = ("flat", "hnsw", "ivfpq")
FORMAT = "toolkit.faiss-index/1"


class IndexSizeError(ValueError):
    """A set too small (or a shape unfit) to train the chosen index; the message says what to change."""


@dataclass
class IndexParams:
    """Index type and parameters (see the module docstring). ``nlist``/``m`` 0 = chosen from the data:
    nlist = min(4 sqrt(N), N / 39), m = the largest divisor of d that is <= min(64, d / 4)."""

    type: str = "flat"
    M: int = 32
    ef_construction: int = 40
    ef_search: int = 64
    nlist: int = 0
    m: int = 0
    nbits: int = 8
    nprobe: int = 16
    refine: int = 0

    def resolved(self, n: int, d: int) -> "IndexParams":
        """A copy with ``nlist`` and ``m`` filled in for ``n`` vectors of dimension ``d``."""
        out = IndexParams(**asdict(self))
        if out.type == "ivfpq":
            if not out.nlist:
                out.nlist = max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39))
            if not out.m:
                out.m = max(k for k in range(1, max(1, min(64, d // 4)) + 1) if d % k == 0)
        return out


def check_params(p: IndexParams, n: int, d: int) -> list[str]:
    """Raise :class:`IndexSizeError` (one line) if Faiss cannot build ``p`` on ``n`` vectors of dimension ``d``;
    return warnings (below Faiss' 39-per-centroid guideline)."""
    if p.type not in TYPES:
        raise IndexSizeError(f"--type must be one of {list(TYPES)}, got {p.type!r}")
    if n < 1:
        raise IndexSizeError("the embedding set is empty")
    warnings = []
    if p.type == "hnsw":
        if not 2 <= p.M <= 256 or p.ef_construction < 1 or p.ef_search < 1:
            raise IndexSizeError(f"HNSW needs 2 <= --M <= 256 (4-64 usual) and --ef-construction, --ef-search >= 1; "
                                 f"got M={p.M}, efConstruction={p.ef_construction}, efSearch={p.ef_search}")
    if p.type == "ivfpq":
        if p.nlist < 1 or p.nprobe < 1 or p.m < 1 or not 1 <= p.nbits <= 16 or p.refine < 0:
            raise IndexSizeError(f"IVF-PQ needs --nlist, --nprobe, --m >= 1, 1 <= --nbits <= 16, --refine >= 0; got "
                                 f"nlist={p.nlist}, nprobe={p.nprobe}, m={p.m}, nbits={p.nbits}, refine={p.refine}")
        if d % p.m:
            raise IndexSizeError(f"IVF-PQ: --m {p.m} must divide the dimension {d}")
        if n < p.nlist:
            raise IndexSizeError(f"IVF-PQ: {n} vectors cannot train --nlist {p.nlist} lists (Faiss k-means needs >= "
                                 f"nlist, 39 x nlist = {39 * p.nlist} to avoid its warning); use --type flat (exact, "
                                 "right for small sets) or a smaller --nlist")
        if n < 2 ** p.nbits:
            raise IndexSizeError(f"IVF-PQ: {n} vectors cannot train {2 ** p.nbits}-centroid PQ sub-quantizers "
                                 f"(--nbits {p.nbits} needs >= {2 ** p.nbits}, {39 * 2 ** p.nbits} to avoid Faiss' "
                                 "warning); use --type flat (exact, right for small sets) or a smaller --nbits")
        if n < 39 * p.nlist:
            warnings.append(f"IVF-PQ: {n} training vectors < 39 x nlist = {39 * p.nlist}: coarse k-means is under-trained")
        if n < 39 * 2 ** p.nbits:
            warnings.append(f"IVF-PQ: {n} training vectors < 39 x 2^nbits = {39 * 2 ** p.nbits}: PQ is under-trained")
    return warnings


def prepare(vectors: np.ndarray, normalize: bool = True) -> np.ndarray:
    """(N, D) contiguous float32 copy, L2-normalised rows if ``normalize``."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32).copy()
    if normalize and len(x):
        faiss.normalize_L2(x)
    return x


def factory_string(p: IndexParams) -> str:
    if p.type == "flat":
        return "Flat"
    if p.type == "hnsw":
        return f"HNSW{p.M},Flat"
    return f"IVF{p.nlist},PQ{p.m}x{p.nbits}" + (",RFlat" if p.refine else "")


def set_search_params(index, p: IndexParams) -> None:
    """Query-time parameters: ``efSearch`` (HNSW), ``nprobe`` and the refine factor (IVF-PQ)."""
    import faiss

    ps = faiss.ParameterSpace()
    if p.type == "hnsw":
        ps.set_index_parameter(index, "efSearch", p.ef_search)
    elif p.type == "ivfpq":
        ps.set_index_parameter(index, "nprobe", p.nprobe)
        if p.refine:
            ps.set_index_parameter(index, "k_factor_rf", p.refine)


def build_index(x: np.ndarray, p: IndexParams, train: np.ndarray | None = None):
    """A Faiss index of type ``p`` holding ``x`` (ids 0..N-1), trained on ``train`` (default ``x``).

    Args:
        x: (N, D) float32 prepared vectors (:func:`prepare`); p: resolved and checked parameters.
    """
    import faiss

    index = faiss.index_factory(x.shape[1], factory_string(p), faiss.METRIC_INNER_PRODUCT)
    if p.type == "hnsw":
        faiss.downcast_index(index).hnsw.efConstruction = p.ef_construction
    if p.type == "ivfpq":
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.do_polysemous_training = False  # only for polysemous search; 100x the training time at 480 x 128
        ivf.cp.min_points_per_centroid = ivf.pq.cp.min_points_per_centroid = 1  # check_params warned once already
    if not index.is_trained:
        index.train(x if train is None else train)
    index.add(x)
    set_search_params(index, p)
    return index


def bytes_per_vector(index, n: int) -> float:
    """Serialized size of ``index`` divided by its ``n`` vectors (graph, codes, ids, refine vectors: all of it)."""
    import faiss

    return len(faiss.serialize_index(index)) / max(n, 1)


def save_index(index, path: str | Path, info: dict) -> Path:
    """Write ``path`` (the index) and ``path.json`` (``info`` + format) atomically."""
    import faiss

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, faiss.serialize_index(index).tobytes())
    write_text(Path(f"{path}.json"), json.dumps({"format": FORMAT, **info}, indent=1))
    return path


def load_index(path: str | Path) -> tuple[object, dict]:
    """``(index, info)`` of an index written by :func:`save_index`.

    Raises:
        FileNotFoundError: ``path`` or ``path.json`` is missing; ValueError: not a Faiss index (named).
    """
    import faiss

    path = Path(path)
    side = Path(f"{path}.json")
    if not path.is_file():
        raise FileNotFoundError(f"--index '{path}' does not exist (made by python -m toolkit.index)")
    if not side.is_file():
        raise FileNotFoundError(f"--index '{path}' has no '{side.name}' beside it (made by python -m toolkit.index)")
    try:
        index = faiss.deserialize_index(np.fromfile(path, dtype=np.uint8))
    except RuntimeError as exc:
        raise ValueError(f"--index '{path}' is not a Faiss index ({str(exc).splitlines()[0]})") from exc
    return index, json.loads(side.read_text())


def timed_build(x: np.ndarray, p: IndexParams) -> tuple[object, float]:
    t0 = time.perf_counter()
    index = build_index(x, p)
    return index, time.perf_counter() - t0


def warn(lines: list[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)
