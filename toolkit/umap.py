"""2-D UMAP of exported embeddings: ``python -m toolkit.umap --embeddings DIR --color scene|camera|class --out DIR``.

umap-learn (McInnes et al. 2018) with the cosine metric (the vectors' similarity in the index), its defaults
otherwise (``n_neighbors`` 15, capped at N - 1; ``min_dist`` 0.1) and ``random_state = --seed``, which makes
the layout reproducible (and umap-learn single-threaded). Writes ``umap.png`` (scatter, one colour per value
of the ``--color`` column: ``scene``, ``camera`` or ``class``, the sample's most frequent annotation
category), ``umap_coords.npy`` ((N, 2) float32, rows in store order) and ``umap.parquet`` (row, x, y and
the colour column).

Run it as ``python -m toolkit.umap``: inside this module ``import umap`` is the absolute import of the
umap-learn package (checked; a script run as ``python toolkit/umap.py`` would shadow it).
"""

from __future__ import annotations

import argparse
import importlib
import io
import sys
from pathlib import Path

import numpy as np

from toolkit.embedding.cli import run_main

COLORS = ("scene", "camera", "class")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m toolkit.umap", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embeddings", required=True, help="an embedding folder (python -m toolkit.embed --out)")
    p.add_argument("--color", choices=COLORS, default="scene", help="metadata column that colours the points")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random_state (default 0)")
    p.add_argument("--n-neighbors", type=int, default=15, help="UMAP n_neighbors (default 15, capped at N - 1)")
    p.add_argument("--min-dist", type=float, default=0.1, help="UMAP min_dist (default 0.1)")
    return p


def umap_learn():
    """The umap-learn module (``import umap``, absolute), checked to be the package and not this file.

    Raises:
        ValueError: umap-learn is missing or shadowed.
    """
    try:
        mod = importlib.import_module("umap")
    except ImportError as exc:
        raise ValueError("umap-learn is not installed: pip install umap-learn") from exc
    if not hasattr(mod, "UMAP"):
        raise ValueError(f"'import umap' found {getattr(mod, '__file__', mod)}, not umap-learn: run python -m toolkit.umap")
    return mod


def embed_2d(vectors: np.ndarray, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1) -> np.ndarray:
    """(N, D) -> (N, 2) float32 UMAP coordinates (cosine metric, seeded).

    Raises:
        ValueError: fewer than 3 vectors.
    """
    n = len(vectors)
    if n < 3:
        raise ValueError(f"UMAP needs at least 3 vectors, the set has {n}")
    import torch

    threads = torch.get_num_threads()  # umap-learn's numba/OpenMP start changes the process-wide OpenMP thread
    try:                               # count (1 -> 2 here), and with it torch's: later training in this process
        reducer = umap_learn().UMAP(n_components=2, n_neighbors=max(2, min(n_neighbors, n - 1)), min_dist=min_dist,
                                    metric="cosine", random_state=seed, n_jobs=1,
                                    init="spectral" if n > 16 else "random")
        return reducer.fit_transform(np.asarray(vectors, np.float32)).astype(np.float32)
    finally:                           # would no longer match a run of the same config in another process
        torch.set_num_threads(threads)


def scatter_png(xy: np.ndarray, labels: list[str], title: str) -> bytes:
    """PNG bytes of a scatter of ``xy`` coloured by ``labels`` (a legend up to 20 values)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = sorted(set(labels))
    cmap = matplotlib.colormaps["tab20"]
    fig, ax = plt.subplots(figsize=(6.4, 5.2), dpi=100)
    for i, v in enumerate(values):
        pick = np.array([lab == v for lab in labels])
        ax.scatter(xy[pick, 0], xy[pick, 1], s=12, color=cmap(i % 20), label=v if len(values) <= 20 else None)
    if len(values) <= 20:
        ax.legend(fontsize=6, markerscale=1.2, loc="best", frameon=False)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def run(args) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from toolkit.embedding.store import EmbeddingStore
    from toolkit.files import atomic_open, write_bytes

    store = EmbeddingStore(args.embeddings)
    records = store.records()
    xy = embed_2d(store.vectors(), args.seed, args.n_neighbors, args.min_dist)
    labels = [str(r[args.color]) for r in records]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "umap_coords.npy") as f:
        np.save(f, xy)
    table = pa.table({"row": [r["row"] for r in records], "x": xy[:, 0], "y": xy[:, 1], args.color: labels})
    with atomic_open(out / "umap.parquet") as f:
        pq.write_table(table, f)
    title = f"UMAP (cosine) of {len(xy)} embeddings, coloured by {args.color}"
    write_bytes(out / "umap.png", scatter_png(xy, labels, title))
    print(f"wrote {out / 'umap.png'}, {out / 'umap_coords.npy'} ({xy.shape[0]} x 2), {out / 'umap.parquet'}")
    return {"rows": len(xy), "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
