"""Build a Faiss index over exported embeddings: ``python -m toolkit.index --embeddings DIR --type flat|hnsw|ivfpq --out INDEX``.

Inner product on L2-normalised vectors (cosine) by default; ids are the embedding rows. Types, parameters and
their training limits: :mod:`toolkit.embedding.faiss_index`. A set too small to train the chosen index is a
one-line error (exit 2) that says what to use instead.

Examples::

    python -m toolkit.index --embeddings outputs/embeddings/real --out outputs/index/real.faiss      # exact
    python -m toolkit.index --embeddings E --type hnsw --M 32 --ef-construction 40 --ef-search 64 --out E.hnsw
    python -m toolkit.index --embeddings E --type ivfpq --nlist 1024 --m 32 --nbits 8 --nprobe 32 --refine 8 --out E.ivfpq

Writes ``INDEX`` and ``INDEX.json`` (type, parameters, the embedding folder, build time, bytes per vector).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from toolkit.embedding.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    from toolkit.embedding.faiss_index import TYPES, IndexParams

    d = IndexParams()
    p = argparse.ArgumentParser(prog="python -m toolkit.index", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embeddings", required=True, help="an embedding folder (python -m toolkit.embed --out)")
    p.add_argument("--type", choices=TYPES, default="flat", help="flat (exact, default), hnsw or ivfpq")
    p.add_argument("--out", required=True, help="index file to write (and INDEX.json beside it)")
    p.add_argument("--no-normalize", action="store_true", help="raw inner product instead of cosine")
    g = p.add_argument_group("hnsw")
    g.add_argument("--M", type=int, default=d.M, help=f"graph neighbours per node (default {d.M})")
    g.add_argument("--ef-construction", type=int, default=d.ef_construction, help=f"default {d.ef_construction}")
    g.add_argument("--ef-search", type=int, default=d.ef_search, help=f"default {d.ef_search}")
    g = p.add_argument_group("ivfpq")
    g.add_argument("--nlist", type=int, default=0, help="inverted lists (default min(4 sqrt(N), N / 39))")
    g.add_argument("--m", type=int, default=0, help="PQ sub-quantizers, must divide the dim (default <= min(64, d/4))")
    g.add_argument("--nbits", type=int, default=d.nbits, help=f"bits per PQ code (default {d.nbits})")
    g.add_argument("--nprobe", type=int, default=d.nprobe, help=f"lists visited per query (default {d.nprobe})")
    g.add_argument("--refine", type=int, default=0, metavar="K_FACTOR",
                   help="re-rank K_FACTOR x k PQ candidates with the exact vectors (IndexRefineFlat; default 0 = off)")
    return p


def run(args) -> dict:
    from toolkit.embedding.faiss_index import (IndexParams, bytes_per_vector, check_params, prepare, save_index,
                                               timed_build, warn)
    from toolkit.embedding.store import EmbeddingStore

    store = EmbeddingStore(args.embeddings)
    vectors = store.vectors()
    n, dim = vectors.shape if vectors.ndim == 2 else (0, 0)
    params = IndexParams(args.type, args.M, args.ef_construction, args.ef_search, args.nlist, args.m, args.nbits,
                         args.nprobe, args.refine).resolved(n, dim)
    warn(check_params(params, n, dim))
    index, build_s = timed_build(prepare(vectors, not args.no_normalize), params)
    info = {"embeddings": str(Path(args.embeddings).resolve()), "type": params.type, "params": asdict(params),
            "normalize": not args.no_normalize, "metric": "inner_product", "rows": n, "dim": dim,
            "build_s": round(build_s, 3), "bytes_per_vector": round(bytes_per_vector(index, n), 1)}
    save_index(index, args.out, info)
    print(f"wrote {args.out}: {params.type} index of {n} vectors, dim {dim}, built in {build_s:.2f} s, "
          f"{info['bytes_per_vector']} bytes/vector")
    return info


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
