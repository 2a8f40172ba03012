"""Export image embeddings: ``python -m toolkit.embed --encoder RUN|MODULE.jit (--shards SPEC | --dataroot DIR) --out DIR``.

Every chosen camera image of multi-sensor shards (``python -m shards nuscenes``) or of a nuScenes dataroot
(read in place) is preprocessed, encoded in batches (on the GPU when there is one) and written as vector
chunks with Parquet metadata (sample token, camera, timestamp, scene, class, where the image is); the folder
format is :mod:`toolkit.embedding.store`. The export is resumable: run the same command again after a crash
or ``kill -9`` and it continues with the first incomplete chunk, writing no row twice; a folder made with
other settings is refused. The encoder and its preprocessing are :mod:`toolkit.embedding.encoder` (any
TorchScript image encoder; ``--encoder RUN`` takes the run's newest image-encoder export and its image
size).

Examples::

    python -m toolkit.embed --encoder runs/token_fusion_tiny --dataroot ../shared/data/nuscenes-real-1sample \\
        --version v1.0-mini --out outputs/embeddings/real
    python -m toolkit.embed --encoder runs/token_fusion_tiny --shards 'data/shards/fusion-synthetic/val-*.tar' \\
        --camera CAM_FRONT --out outputs/embeddings/val-front
    python -m toolkit.embed --encoder vitl14.jit --dataroot /data/sets/nuscenes --version v1.0-mini \\
        --image-size 224x224 --resize crop --resample bicubic --pool cls \\
        --mean 0.48145466 0.4578275 0.40821073 --std 0.26862954 0.26130258 0.27577711 --out outputs/embeddings/vitl14

Then ``python -m toolkit.index``, ``python -m toolkit.search``, ``python -m toolkit.umap``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from toolkit.embedding.cli import image_size, run_main


def build_parser() -> argparse.ArgumentParser:
    from toolkit.embedding.encoder import POOLS, RESIZES

    p = argparse.ArgumentParser(prog="python -m toolkit.embed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", required=True, help="a run folder (its newest img_enc/encoder export) or a .jit file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", help="multi-sensor shards (brace pattern or glob)")
    src.add_argument("--dataroot", help="a nuScenes dataroot, read in place")
    p.add_argument("--version", default="v1.0-mini", help="table version of --dataroot (default v1.0-mini)")
    p.add_argument("--camera", nargs="+", metavar="CAM", help="cameras to export (default all six)")
    p.add_argument("--pool", choices=POOLS, default="mean", help="pooling of (N, T, C) token outputs (default mean)")
    p.add_argument("--image-size", type=image_size, metavar="WxH",
                   help="encoder input WIDTHxHEIGHT (default: the run's training size; required for other encoders)")
    p.add_argument("--resize", choices=RESIZES, default="squash",
                   help="squash to the size (default) or resize the shortest side and centre-crop (CLIP)")
    p.add_argument("--resample", choices=["bilinear", "bicubic"], default="bilinear", help="resize filter")
    p.add_argument("--mean", type=float, nargs=3, help="per-channel mean after scaling to [0, 1] (default none)")
    p.add_argument("--std", type=float, nargs=3, help="per-channel std (with --mean)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="stored vector dtype")
    p.add_argument("--batch-size", type=int, default=32, help="images per encoder call (default 32)")
    p.add_argument("--chunk", type=int, default=1024, help="rows per chunk file, the unit of resuming (default 1024)")
    p.add_argument("--device", default="auto", help="torch device (default: cuda if present, else cpu)")
    p.add_argument("--out", required=True, help="output folder (resumed if it holds the same export)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def settings_of(args) -> tuple[dict, Path]:
    """(the settings that define the export, the encoder file).

    Raises:
        ValueError, FileNotFoundError: a bad combination of options or a missing encoder (naming them).
    """
    from toolkit.embedding.encoder import file_sha256, resolve_encoder
    from toolkit.embedding.sources import check_cameras

    if (args.mean is None) != (args.std is None):
        raise ValueError("give --mean and --std together")
    if args.std is not None and min(args.std) <= 0:
        raise ValueError(f"--std must be > 0, got {args.std}")
    if args.batch_size < 1 or args.chunk < 1:
        raise ValueError("--batch-size and --chunk must be >= 1")
    jit, run_size = resolve_encoder(args.encoder)
    size = args.image_size or run_size
    if size is None:
        raise ValueError(f"--image-size is required: '{jit}' is not a toolkit run's export, so its input size is unknown")
    source = ({"shards": args.shards} if args.shards else
              {"dataroot": str(Path(args.dataroot).resolve()), "version": args.version})
    return {"encoder": str(jit), "encoder_sha256": file_sha256(jit), "source": source,
            "cameras": check_cameras(args.camera), "image_size": list(size), "resize": args.resize,
            "resample": args.resample, "mean": args.mean, "std": args.std, "pool": args.pool, "dtype": args.dtype,
            "chunk": args.chunk}, jit


def _chunks(items, size: int):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run(args) -> dict:
    from tqdm import tqdm

    from toolkit.embedding.encoder import Encoder, Preprocess
    from toolkit.embedding.sources import iter_dataroot_images, iter_shard_images
    from toolkit.embedding.store import EmbeddingWriter
    from toolkit.engine.device import select_device

    settings, jit = settings_of(args)
    device = select_device(args.device) if args.device == "auto" else args.device
    encoder = Encoder(jit, device, args.pool)
    w, h = settings["image_size"]
    prep = Preprocess(w, h, args.resize, args.resample, tuple(args.mean) if args.mean else None,
                      tuple(args.std) if args.std else None)
    writer = EmbeddingWriter(args.out, settings)
    done = writer.open()
    cams = settings["cameras"]
    images = (iter_shard_images(args.shards, cams) if args.shards else
              iter_dataroot_images(args.dataroot, args.version, cams))
    bar = tqdm(unit="img", desc="embed", disable=args.no_progress, file=sys.stderr)
    written = 0
    for i, chunk in enumerate(_chunks(images, args.chunk)):
        if i in done:
            bar.update(len(chunk))
            continue
        vectors = []
        for s in range(0, len(chunk), args.batch_size):
            part = chunk[s:s + args.batch_size]
            batch = np.stack([prep(data, name=f"{r['file']} {r['member']}".strip()) for r, data in part])
            vectors.append(encoder(batch))
            bar.update(len(part))
        rows = [{"row": i * args.chunk + j, **r} for j, (r, _) in enumerate(chunk)]
        writer.write_chunk(i, np.concatenate(vectors).astype(args.dtype), rows)
        written += 1
    bar.close()
    if not writer.done:
        raise ValueError("no image found: the source holds no image of cameras " + ", ".join(cams))
    store = writer.finish()
    print(f"wrote {store.rows} embeddings of dim {store.dim} ({args.dtype}) to {args.out} "
          f"({written} chunks now, {len(done)} already there)")
    return {"rows": store.rows, "dim": store.dim, "chunks_written": written, "chunks_resumed": len(done)}


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
