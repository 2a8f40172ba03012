"""k-nearest-neighbour queries: ``python -m toolkit.search --index INDEX QUERY -k 10 [--sheet out.png]``.

``QUERY`` is ``--image FILE``, ``--token SAMPLE_TOKEN [--camera CAM]`` or ``--vector FILE.npy``.

The query is an image file (encoded with the encoder and preprocessing recorded in the embedding folder), a
sample token of the indexed set (its stored vector; ``--camera`` picks the camera, CAM_FRONT by default when
the sample has several), or a vector (``.npy`` of shape (D,) or (1, D)). The neighbours are printed with their
metadata (score = cosine similarity for the default normalised index); ``--sheet out.png`` writes a contact
sheet of the query and its neighbours, the images read back from the shards or files recorded in the
metadata. A query from the index finds itself first (score 1 with a flat index).

Examples::

    python -m toolkit.search --index outputs/index/real.faiss --token ca9a282c9e77460f8360f564131a8af5 \\
        --camera CAM_FRONT -k 5 --sheet docs/search_real_cam_front.png
    python -m toolkit.search --index E.hnsw --image my.jpg -k 10 --ef-search 128 --json hits.json
"""

from __future__ import annotations

import argparse
import io
import json
import sys

import numpy as np

from toolkit.embedding.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m toolkit.search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, help="an index of python -m toolkit.index (INDEX.json beside it)")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--image", help="query image file (encoded like the indexed set)")
    q.add_argument("--token", help="query by a sample token of the indexed set")
    q.add_argument("--vector", help="query vector, .npy of shape (D,) or (1, D)")
    p.add_argument("--camera", help="camera of --token (default CAM_FRONT when the sample has several)")
    p.add_argument("-k", type=int, default=10, help="neighbours (default 10)")
    p.add_argument("--ef-search", type=int, help="HNSW efSearch for this query (default: the index's)")
    p.add_argument("--nprobe", type=int, help="IVF nprobe for this query (default: the index's)")
    p.add_argument("--sheet", help="write a contact sheet PNG of the query and its neighbours")
    p.add_argument("--thumb", type=int, default=192, help="contact-sheet thumbnail width, px (default 192)")
    p.add_argument("--json", help="also write the neighbours as JSON")
    p.add_argument("--device", default="cpu", help="torch device for --image (default cpu)")
    return p


def _token_row(records: list[dict], token: str, camera: str | None) -> int:
    rows = [r for r in records if r["sample_token"] == token]
    if not rows:
        raise KeyError(f"--token {token} is not in the indexed set")
    cams = [r["camera"] for r in rows]
    if camera is None:
        camera = cams[0] if len(cams) == 1 else "CAM_FRONT"
    if camera not in cams:
        raise KeyError(f"--camera {camera}: sample {token} has the cameras {cams} in the indexed set")
    return next(r["row"] for r in rows if r["camera"] == camera)


def _encode_image(path: str, settings: dict, device: str) -> tuple[np.ndarray, bytes]:
    from pathlib import Path

    from toolkit.embedding.encoder import Encoder, Preprocess

    data = Path(path).read_bytes() if Path(path).is_file() else None
    if data is None:
        raise FileNotFoundError(f"--image '{path}' does not exist")
    w, h = settings["image_size"]
    prep = Preprocess(w, h, settings["resize"], settings["resample"],
                      tuple(settings["mean"]) if settings.get("mean") else None,
                      tuple(settings["std"]) if settings.get("std") else None)
    if not Path(settings["encoder"]).is_file():
        raise FileNotFoundError(f"the encoder of the indexed set, '{settings['encoder']}', is gone: --image needs it")
    return Encoder(settings["encoder"], device, settings["pool"])(prep(data, name=path)[None])[0], data


def _blank_png(width: int = 192, height: int = 108) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 200, 200)).save(buf, "PNG")
    return buf.getvalue()


def run(args) -> dict:
    from dataclasses import fields

    from toolkit.embedding.faiss_index import IndexParams, load_index, prepare, set_search_params
    from toolkit.embedding.store import EmbeddingStore
    from toolkit.files import write_text

    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    index, info = load_index(args.index)
    store = EmbeddingStore(info["embeddings"])
    records = store.records()
    if len(records) != index.ntotal:
        raise ValueError(f"--index '{args.index}' holds {index.ntotal} vectors but its embedding folder "
                         f"'{info['embeddings']}' has {len(records)} rows: rebuild the index")
    params = IndexParams(**{f.name: info["params"][f.name] for f in fields(IndexParams) if f.name in info["params"]})
    params.ef_search = args.ef_search or params.ef_search
    params.nprobe = args.nprobe or params.nprobe
    set_search_params(index, params)

    query_image, label = None, ""
    if args.token:
        row = _token_row(records, args.token, args.camera)
        vector, label = store.vectors()[row], f"{args.token} {records[row]['camera']}"
        query_image = records[row]
    elif args.image:
        vector, data = _encode_image(args.image, store.settings, args.device)
        query_image, label = data, args.image
    else:
        vector, label = np.load(args.vector).reshape(-1), args.vector
    if vector.shape != (index.d,):
        raise ValueError(f"the query vector has shape {vector.shape}; the index holds dim {index.d}")
    k = min(args.k, index.ntotal)
    scores, ids = index.search(prepare(vector[None], info.get("normalize", True)), k)
    hits = [{"rank": r + 1, "score": float(s), **records[i]} for r, (s, i) in enumerate(zip(scores[0], ids[0])) if i >= 0]
    print(f"query: {label}  ({info['type']} index of {index.ntotal}, k={k})")
    print(f"{'rank':>4} {'score':>7}  {'sample_token':32} {'camera':16} {'scene':24} {'timestamp_us':>16}  source")
    for h in hits:
        where = f"{h['file']}:{h['key']}.{h['member']}" if h["source"] == "shard" else h["file"]
        print(f"{h['rank']:>4} {h['score']:7.4f}  {h['sample_token']:32} {h['camera']:16} {h['scene']:24} "
              f"{h['timestamp_us']:>16}  {where}")
    if args.sheet:
        from toolkit.embedding.sheet import contact_sheet
        from toolkit.embedding.sources import read_image_bytes

        first = read_image_bytes(query_image) if isinstance(query_image, dict) else (query_image or _blank_png())
        tiles = [(first, ["query", label[:30], f"{label[30:60]}"])]
        tiles += [(read_image_bytes(h), [f"#{h['rank']}  {h['score']:.3f}", h["camera"], h["sample_token"][:24]])
                  for h in hits]
        contact_sheet(tiles, args.sheet, args.thumb)
        print(f"wrote {args.sheet}")
    result = {"query": label, "index": args.index, "k": k, "neighbours": hits}
    if args.json:
        write_text(args.json, json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
