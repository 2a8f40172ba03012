"""``python -m toolkit.reconstruct --task lidar_tokenizer``: autoencode LiDAR scans and write the
reconstructions (the analogue of Cosmos' ``lidar_cli``).

For every frame of the input (a shard ``.tar``, a ``.pcd.bin``, shards by pattern, or a nuScenes
dataroot read through the devkit) it writes into ``--out``:

* ``<key>.npy``: reconstructed points, (M, 4) float32 ``x, y, z, intensity`` in the lidar frame (m),
  one per valid input pixel, using each pixel's original direction and the reconstructed range;
* ``<key>.pcd.bin``: the same points nuScenes-style, float32 ``x, y, z, intensity, ring``;
* ``<key>_range.png``: input, reconstruction and |error| range maps, stacked;
* ``<key>_error_hist.png``: histogram of |error| (0-10 m) with RMSE, MAE and relative error in the title;

and prints the metrics of each frame and of all frames pooled. Example::

    python -m toolkit.reconstruct --task lidar_tokenizer --enc runs/lidar_tokenizer/checkpoints/iter_000000600_enc.jit \\
        --dec runs/lidar_tokenizer/checkpoints/iter_000000600_dec.jit \\
        --dataroot ../shared/data/nuscenes-real-1sample --out outputs/reconstructions
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from toolkit.files import atomic_open, write_bytes


def add_arguments(p: argparse.ArgumentParser) -> None:
    """This family's options of ``python -m toolkit.reconstruct`` (beside ``--task`` and ``--device``)."""
    from .inference import add_tokenizer_arguments

    add_tokenizer_arguments(p, with_sample=True, max_frames=20)
    p.add_argument("--out", required=True, help="output folder")


def _save_png(path: Path, fig) -> None:
    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=110)


def write_frame(out: Path, key: str, rm, recon: np.ndarray, lo: float, hi: float) -> dict:
    """Write the four outputs of one frame; returns its metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolkit.lidar.range_map import points_from_range

    from .metrics import RangeErrorSums
    from .visuals import error_rgb, range_rgb

    r = rm.range_m
    valid = (r >= lo) & (r <= hi)
    err = np.abs(recon - r)
    frame_sums = RangeErrorSums()
    frame_sums.update(torch.from_numpy(recon)[None], torch.from_numpy(r)[None], torch.from_numpy(valid)[None])
    metrics = frame_sums.result()
    d = err[valid].astype(np.float64)

    xyz = points_from_range(recon, rm.azimuth, rm.elevation)[valid]
    rows = np.nonzero(valid)[0]
    ring = (r.shape[0] - 1 - rows).astype(np.float32)  # row 0 is the highest ring
    inten = rm.intensity[valid]
    pts4 = np.concatenate([xyz, inten[:, None]], 1).astype(np.float32)
    with atomic_open(out / f"{key}.npy") as f:
        np.save(f, pts4)
    write_bytes(out / f"{key}.pcd.bin", np.concatenate([pts4, ring[:, None]], 1).astype(np.float32).tobytes())

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


def run(args) -> dict:
    """Reconstruct every frame, write the outputs, print per-frame and pooled metrics; returns the pooled ones.

    Raises:
        ValueError: if no frame was found (and the errors of :class:`~.inference.Tokenizer`).
    """
    from toolkit.engine.checkpoint import latest_exports

    from .inference import Tokenizer, iter_frames
    from .metrics import RangeErrorSums

    out = Path(args.out)
    if args.run:
        args.enc, args.dec = latest_exports(args.run, ("enc", "dec"))
    tok = Tokenizer(args.enc, args.dec, args.checkpoint, args.weights, args.device, args.dtype)
    frames = iter_frames(shards=args.shards, dataroot=args.dataroot, version=args.version, sample=args.sample,
                         max_frames=args.max_frames)
    out.mkdir(parents=True, exist_ok=True)
    pooled = RangeErrorSums()
    lo, hi = tok.min_range_m, tok.max_range_m
    for frame in frames:
        recon, _ = tok.reconstruct(frame.range_map.range_m)
        m = write_frame(out, frame.key, frame.range_map, recon, lo, hi)
        rt = torch.from_numpy(frame.range_map.range_m)[None]
        pooled.update(torch.from_numpy(recon)[None], rt, (rt >= lo) & (rt <= hi))
        print(f"{frame.key}: RMSE {m['rmse_m']:.3f} m, MAE {m['mae_m']:.3f} m, rel {m['rel_err']:.4f} "
              f"({m['valid_pixels']} valid pixels)")
    if pooled.frames == 0:
        raise ValueError("no frames found")
    r = pooled.result()
    print(f"all {pooled.frames} frames: RMSE {r['rmse_m']:.3f} m, MAE {r['mae_m']:.3f} m, rel {r['rel_err']:.4f}; "
          f"outputs in {out}")
    return r
