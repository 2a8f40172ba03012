"""``python -m toolkit.predict --task bev``: per sample, a PNG of the six input images over the predicted BEV maps
and their targets (seg, centre, offsets), from a trained run, on shards or a dataroot (the real sample too)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from .evaluate import add_source_arguments, shard_source


def add_arguments(p: argparse.ArgumentParser) -> None:
    from toolkit.cli import add_model_arguments

    add_model_arguments(p)
    add_source_arguments(p)
    p.add_argument("--out", required=True, help="folder for the PNGs (created)")
    p.add_argument("--max-samples", type=int, default=8, help="samples drawn at most (default 8)")


def prediction_figure(task, model, batch: dict, title: str) -> "np.ndarray":
    """One sample (batch of 1): (H, W, 3) uint8 picture: cameras on top, BEV prediction vs target below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolkit.tasks.common.figures import figure_to_tensor

    with torch.no_grad():
        panels = task.visuals(model, batch)
    fig = plt.figure(figsize=(12, 9), dpi=90)
    ax = fig.add_axes([0.0, 0.5, 1.0, 0.46])
    if "cameras" in panels:
        ax.imshow(panels["cameras"].permute(1, 2, 0).numpy())
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    ax2 = fig.add_axes([0.1, 0.0, 0.8, 0.48])
    ax2.imshow(panels["bev_pred_vs_target"].permute(1, 2, 0).numpy(), interpolation="nearest")
    ax2.set_axis_off()
    ax2.set_title("top: predicted seg, centre, offsets | bottom: target (grey = ignored) -- forward up, left left",
                  fontsize=8)
    return (figure_to_tensor(fig).permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def run(args) -> dict:
    """Write ``<out>/<n>_<sample key>.png`` per sample; returns the list of files written."""
    from PIL import Image

    from toolkit.data.pipeline import eval_loader
    from toolkit.engine.checkpoint import load_trained_model

    if args.max_samples < 1:
        raise ValueError(f"--max-samples must be >= 1, got {args.max_samples}")
    if bool(args.run) == bool(args.checkpoint):
        raise ValueError("give exactly one of --run or --checkpoint")
    trained = load_trained_model(args.run or args.checkpoint, args.weights)
    if trained.config.task.name != args.task:
        raise ValueError(f"{trained.path} is a {trained.config.task.name!r} run, not {args.task!r}")
    task, model = trained.task, trained.model
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with shard_source(args) as pattern:
        loader = eval_loader(pattern, task.decode_eval, 1, num_workers=0, keys=task.shard_keys)
        for i, batch in enumerate(loader):
            if i >= args.max_samples:
                break
            key = str(batch.pop("key", [f"sample{i}"])[0])
            with torch.no_grad():
                pred = model(*task.export_inputs(batch)["model"])  # eager: (seg, center, offset)
            seg = pred[0] if isinstance(pred, (tuple, list)) else pred[:, :1]
            inter = float(((seg > 0) & (batch["seg"] > 0.5) & (batch["valid"] > 0.5)).sum())
            union = float((((seg > 0) | (batch["seg"] > 0.5)) & (batch["valid"] > 0.5)).sum())
            title = f"{key}   IoU {inter / union:.3f}" if union else key
            path = out / f"{i:03d}_{key}.png"
            Image.fromarray(prediction_figure(task, model, batch, title)).save(path)
            written.append(str(path))
            print(f"wrote {path}")
    if not written:
        raise ValueError(f"no samples read from {args.shards or args.dataroot}")
    return {"files": written}
