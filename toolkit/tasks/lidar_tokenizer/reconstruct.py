"""Autoencode LiDAR scans and write the reconstructions (the analogue of Cosmos' ``lidar_cli``).

For every frame of the input (a shard ``.tar``, a ``.pcd.bin``, shards by pattern, or a nuScenes
dataroot read through the devkit) it writes into ``--out``:

* ``<key>.npy``: reconstructed points, (M, 4) float32 ``x, y, z, intensity`` in the lidar frame (m),
  one per valid input pixel, using each pixel's original direction and the reconstructed range;
* ``<key>.pcd.bin``: the same points nuScenes-style, float32 ``x, y, z, intensity, ring``;
* ``<key>_range.png``: input, reconstruction and |error| range maps, stacked;
* ``<key>_error_hist.png``: histogram of |error| (0-10 m) with RMSE, MAE and relative error in the title;

and prints the metrics of each frame and of all frames pooled. Example::

    python -m toolkit.reconstruct --enc runs/lidar_tokenizer/checkpoints/iter_000000600_enc.jit \\
        --dec runs/lidar_tokenizer/checkpoints/iter_000000600_dec.jit \\
        --dataroot ../shared/data/nuscenes-real-1sample --out outputs/reconstructions
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m toolkit.reconstruct", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--enc", help="encoder TorchScript file (iter_N_enc.jit)")
    p.add_argument("--dec", help="decoder TorchScript file (iter_N_dec.jit)")
    p.add_argument("--run", help="run folder: use the newest checkpoint's enc/dec exports")
    p.add_argument("--checkpoint", help="iter_N.pt instead of --enc/--dec (EMA weights)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--sample", help="a shard .tar or a .pcd.bin file")
    src.add_argument("--shards", help="shards by brace pattern or glob")
    src.add_argument("--dataroot", help="nuScenes dataroot")
    p.add_argument("--version", default="v1.0-mini", help="nuScenes table version (default v1.0-mini)")
    p.add_argument("--max-frames", type=int, default=20, help="at most this many frames (default 20, 0 = all)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="tokenizer dtype (default float32, as the exports were traced)")
    p.add_argument("--device", default="cpu")
    return p


def _save_png(path: Path, fig) -> None:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def write_frame(out: Path, key: str, rm, recon: np.ndarray, lo: float, hi: float) -> dict:
    """Write the four outputs of one frame; returns its metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolkit.lidar.range_map import points_from_range
    from toolkit.tasks.lidar_tokenizer.visuals import error_rgb, range_rgb

    r = rm.range_m
    valid = (r >= lo) & (r <= hi)
    err = np.abs(recon - r)
    d = err[valid].astype(np.float64)
    metrics = {"rmse_m": float(np.sqrt(np.mean(d ** 2))), "mae_m": float(d.mean()),
               "rel_err": float(np.mean(d / (r[valid] + 1e-6))), "valid_pixels": int(valid.sum())}

    xyz = points_from_range(recon, rm.azimuth, rm.elevation)[valid]
    rows = np.nonzero(valid)[0]
    ring = (r.shape[0] - 1 - rows).astype(np.float32)  # row 0 is the highest ring
    inten = rm.intensity[valid]
    pts4 = np.concatenate([xyz, inten[:, None]], 1).astype(np.float32)
    tmp = out / f"{key}.tmp.npy"
    np.save(tmp, pts4)
    os.replace(tmp, out / f"{key}.npy")
    tmp = out / f"{key}.pcd.bin.tmp"
    np.concatenate([pts4, ring[:, None]], 1).astype(np.float32).tofile(tmp)
    os.replace(tmp, out / f"{key}.pcd.bin")

    rows_img = [range_rgb(r, valid, lo, hi), range_rgb(recon, valid, lo, hi), error_rgb(err, valid)]
    fig, axes = plt.subplots(3, 1, figsize=(12, 4.2))
    for ax, img, title in zip(axes, rows_img, ["input range (log colour)", "reconstruction", "|error| 0-5 m"]):
        ax.imshow(img, aspect="auto", interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    _save_png(out / f"{key}_range.png", fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(np.clip(d, 0, 10), bins=100, range=(0, 10))
    ax.set_xlabel("|error| (m)")
    ax.set_ylabel("pixels")
    ax.set_yscale("log")
    ax.set_title(f"RMSE {metrics['rmse_m']:.3f} m  MAE {metrics['mae_m']:.3f} m  rel {metrics['rel_err']:.4f}",
                 fontsize=9)
    fig.tight_layout()
    _save_png(out / f"{key}_error_hist.png", fig)
    plt.close(fig)
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from toolkit.engine.checkpoint import CheckpointError
    from toolkit.lidar.metrics import RangeErrorSums
    from toolkit.tasks.lidar_tokenizer.inference import Tokenizer, iter_frames, latest_exports

    out = Path(args.out)
    try:
        if args.run:
            args.enc, args.dec = latest_exports(args.run)
        tok = Tokenizer(args.enc, args.dec, args.checkpoint, "ema", args.device, args.dtype)
        frames = iter_frames(shards=args.shards, dataroot=args.dataroot, version=args.version, sample=args.sample,
                             max_frames=args.max_frames)
        out.mkdir(parents=True, exist_ok=True)
        pooled = RangeErrorSums()
        lo, hi = tok.min_range_m, tok.max_range_m
        n = 0
        for frame in frames:
            recon, _ = tok.reconstruct(frame.range_map.range_m)
            m = write_frame(out, frame.key, frame.range_map, recon, lo, hi)
            rt = torch.from_numpy(frame.range_map.range_m)[None]
            pooled.update(torch.from_numpy(recon)[None], rt, (rt >= lo) & (rt <= hi))
            print(f"{frame.key}: RMSE {m['rmse_m']:.3f} m, MAE {m['mae_m']:.3f} m, rel {m['rel_err']:.4f} "
                  f"({m['valid_pixels']} valid pixels)")
            n += 1
    except (ValueError, FileNotFoundError, CheckpointError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if n == 0:
        print("error: no frames found", file=sys.stderr)
        return 2
    r = pooled.result()
    print(f"all {n} frames: RMSE {r['rmse_m']:.3f} m, MAE {r['mae_m']:.3f} m, rel {r['rel_err']:.4f}; "
          f"outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
