"""The LiDAR tokenizer's part of ``python -m toolkit.evaluate --task lidar_tokenizer ...``.

LiDAR tokenizer: reconstruction error in metres over valid pixels (input range inside
[min, max], by default the interval the model was trained with), pooled over all frames:
RMSE, MAE and relative error (definitions: ``shared/notes/lidar-tokenizer.md`` section 4). With
``--baseline`` it also scores the trivial codec at the same compression: clamp to the interval,
area-downsample by each factor pair of floor(compression) (1x4, 2x2, 4x1 at 4x), upsample bilinearly;
the best pair (lowest RMSE) is reported.

Examples::

    python -m toolkit.evaluate --task lidar_tokenizer \\
        --enc runs/lidar_tokenizer/checkpoints/iter_000000600_enc.jit \\
        --dec runs/lidar_tokenizer/checkpoints/iter_000000600_dec.jit \\
        --dataroot ../shared/data/nuscenes-real-1sample --version v1.0-mini --baseline --json real.json
    python -m toolkit.evaluate --task lidar_tokenizer --checkpoint runs/lidar_tokenizer/checkpoints/iter_000000600.pt \\
        --shards 'data/shards/synthetic-nuscenes/val-*.tar'
"""

from __future__ import annotations

import argparse
import math

import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    """This family's options of ``python -m toolkit.evaluate`` (beside ``--task``, ``--device``, ``--json``)."""
    from .inference import add_tokenizer_arguments

    add_tokenizer_arguments(p, with_sample=False, max_frames=0)
    p.add_argument("--min-range", type=float, default=None, help="valid interval lower bound, m (default: model's)")
    p.add_argument("--max-range", type=float, default=None, help="valid interval upper bound, m (default: model's)")
    p.add_argument("--baseline", action="store_true", help="also score the downsample/bilinear baseline")


def evaluate_lidar_tokenizer(args) -> dict:
    """Run the evaluation described in the module docstring; returns the JSON dict."""
    from toolkit.engine.checkpoint import latest_exports

    from .inference import Tokenizer, iter_frames
    from .metrics import RangeErrorSums, downsample_baseline, factor_pairs

    if args.run:
        args.enc, args.dec = latest_exports(args.run, ("enc", "dec"))
    tok = Tokenizer(args.enc, args.dec, args.checkpoint, args.weights, args.device, args.dtype)
    lo = tok.min_range_m if args.min_range is None else args.min_range
    hi = tok.max_range_m if args.max_range is None else args.max_range
    if not 0 <= lo < hi:
        raise ValueError(f"--min-range ({lo}) must be < --max-range ({hi})")
    sums = RangeErrorSums()
    frames = list(iter_frames(shards=args.shards, dataroot=args.dataroot, version=args.version,
                              max_frames=args.max_frames))
    if not frames:
        raise ValueError("no frames found")
    map_values = latent_values = 0
    for frame in frames:
        r = frame.range_map.range_m
        recon, n_latent = tok.reconstruct(r)
        rt = torch.from_numpy(r)[None]
        sums.update(torch.from_numpy(recon)[None], rt, (rt >= lo) & (rt <= hi))
        map_values += r.size
        latent_values += n_latent
    compression = map_values / latent_values
    result = {**sums.result(), "compression": compression, "min_range_m": lo, "max_range_m": hi,
              "model": tok.source, "source": args.shards or f"{args.dataroot} ({args.version})"}
    if args.baseline:
        ratio = max(1, math.floor(compression + 1e-9))
        best = None
        for factor in factor_pairs(ratio):
            b = RangeErrorSums()
            for frame in frames:
                rt = torch.from_numpy(frame.range_map.range_m)[None, None]
                b.update(downsample_baseline(rt, factor, lo, hi), rt, (rt >= lo) & (rt <= hi))
            res = {**b.result(), "factor": list(factor), "compression": float(ratio)}
            result.setdefault("baseline_all", []).append(res)
            if best is None or res["rmse_m"] < best["rmse_m"]:
                best = res
        result["baseline"] = best
    return result


def format_table(result: dict) -> str:
    rows = [("model", result)]
    if "baseline" in result:
        b = result["baseline"]
        rows.append((f"baseline {b['factor'][0]}x{b['factor'][1]} area+bilinear", b))
    lines = ["| codec | compression | RMSE (m) | MAE (m) | rel. error | frames | valid pixels |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['compression']:.2f}x | {r['rmse_m']:.3f} | {r['mae_m']:.3f} | "
                     f"{r['rel_err']:.4f} | {r['frames']} | {r['valid_pixels']} |")
    return "\n".join(lines) + f"\nvalid pixels: input range in [{result['min_range_m']:g}, {result['max_range_m']:g}] m"


def run(args) -> dict:
    """Evaluate, print the table; returns the JSON dict (written by the caller with ``--json``)."""
    result = evaluate_lidar_tokenizer(args)
    print(format_table(result))
    return result
