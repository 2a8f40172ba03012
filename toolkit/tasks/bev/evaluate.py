"""``python -m toolkit.evaluate --task bev``: the vehicle IoU table of a trained run on shards or a dataroot.

``--shards`` are multi-sensor shards (``python -m shards nuscenes``); ``--dataroot``/``--version`` (real
nuScenes such as ``../shared/data/nuscenes-real-1sample``, or a synthetic dataroot) are first written to
temporary shards with the same builder, then scored by the training evaluator: ``iou`` (visibility-filtered
global IoU, Simple-BEV's setting), ``iou_30m`` (30 x 30 m around the ego) and ``iou_all`` (no filter, the
LSS/FIERY literature setting), each from intersections and unions summed over the whole set.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

ROWS = (("iou", "vehicle IoU, visibility-filtered (Simple-BEV)"), ("iou_30m", "vehicle IoU, 30 x 30 m around the ego"),
        ("iou_all", "vehicle IoU, no visibility filter (LSS/FIERY)"))


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """``--shards`` or ``--dataroot`` + ``--version`` (+ ``--split``): the samples to score or draw."""
    p.add_argument("--shards", help="multi-sensor shards (brace pattern or glob)")
    p.add_argument("--dataroot", help="a nuScenes dataroot, converted to temporary shards first")
    p.add_argument("--version", default="v1.0-mini", help="table version of --dataroot (default v1.0-mini)")
    p.add_argument("--split", default=None, help="official split of --dataroot's scenes (default: all scenes)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from toolkit.cli import add_model_arguments

    add_model_arguments(p)
    add_source_arguments(p)
    p.add_argument("--batch-size", type=int, default=0, help="evaluation batch size (default: the run's)")
    p.add_argument("--max-batches", type=int, default=0, help="stop after this many batches (0 = all)")
    p.add_argument("--baseline", action="store_true",
                   help="also score the trivial baseline: the per-cell vehicle frequency of the run's training shards "
                        "(data.train), thresholded at its best training-set IoU")


@contextlib.contextmanager
def shard_source(args):
    """Yield a shard pattern for ``args`` (``--shards`` as given, or ``--dataroot`` written to a temporary folder).

    Raises:
        ValueError: neither or both of ``--shards`` and ``--dataroot``.
    """
    if bool(args.shards) == bool(args.dataroot):
        raise ValueError("give exactly one of --shards or --dataroot")
    if args.shards:
        yield args.shards
        return
    from shards.nuscenes_multisensor import build_nuscenes_multisensor_shards

    with tempfile.TemporaryDirectory(prefix="bev-eval-") as tmp:
        info = build_nuscenes_multisensor_shards(args.dataroot, args.version, tmp,
                                                 splits=[args.split] if args.split else None, progress=False)
        names = [n for split in info["splits"].values() for n in split["shards"]]
        if not names:
            raise ValueError(f"--dataroot {args.dataroot}: no keyframes found")
        yield "::".join(str(Path(tmp) / n) for n in names)


def run(args) -> dict:
    """Score the run and print the IoU table; returns the JSON dict (``metrics``, ``sums``, ...)."""
    from toolkit.engine import evaluation

    with shard_source(args) as pattern:
        source = args.shards or f"{args.dataroot} ({args.version})"
        args.shards = pattern
        result = evaluation.run(args)
        if args.baseline:
            from toolkit.engine.checkpoint import load_trained_model

            from .baseline import frequency_baseline

            cfg = load_trained_model(args.run or args.checkpoint, args.weights).config
            result["baseline"] = frequency_baseline(cfg.data.train, pattern, cfg.task.sample.grid(),
                                                    cfg.task.sample.categories, cfg.task.sample.ignore_visibility)
    result["source"] = source
    m, b = result["metrics"], result.get("baseline", {})
    print(f"\n| setting | model | {'trivial baseline |' if b else ''}\n|---|---|{'---|' if b else ''}")
    for key, label in ROWS:
        extra = f" {b[key]:.4f} |" if key in b else (" – |" if b else "")
        print(f"| {label} | {m.get(key, float('nan')):.4f} |{extra}")
    return result
