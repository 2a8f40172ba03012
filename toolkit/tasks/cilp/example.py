"""Tiny CILP-layout samples and untrained upstream runs, for the task contract test (``Task.example``).

Samples are rendered by the synthetic generator (:func:`shards.synthetic.cilp.render_sample`) and
encoded exactly as :mod:`shards.cilp` stores them; upstream runs are real checkpoints of untrained
models (written by :class:`~toolkit.engine.checkpoint.Checkpointer`), so the staged tasks load them
the way they load trained ones.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

TINY = {"channels": [4, 8, 8, 8]}  #: trunk widths of the tiny example models


def example_samples(rng: np.random.Generator, per_class: int = 2) -> list[dict]:
    """Raw shard samples (extension -> bytes), ``per_class`` cubes then spheres."""
    from PIL import Image

    from shards.synthetic.cilp import beam_angles, render_sample

    def npy(a) -> bytes:
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    az, ze = beam_angles()
    samples = []
    for label, cls in enumerate(("cubes", "spheres")):
        for i in range(per_class):
            rgba, rimg = render_sample(cls, rng)
            png = io.BytesIO()
            Image.fromarray(rgba, "RGBA").save(png, format="PNG")
            samples.append({"__key__": f"{cls}_{i:04d}", "rgb.png": png.getvalue(), "lidar.npy": npy(rimg),
                            "azimuth.npy": npy(np.asarray(az, np.float32)), "zenith.npy": npy(np.asarray(ze, np.float32)),
                            "cls": str(label).encode(), "json": json.dumps({"class": cls, "index": i}).encode()})
    return samples


def write_untrained_run(run: Path, task: dict) -> Path:
    """A run folder with one checkpoint (step 0) of the untrained model of ``task`` (a ``task:`` dict)."""
    import torch

    from toolkit.config import load_config, to_dict
    from toolkit.engine.checkpoint import Checkpointer
    from toolkit.tasks import build_task

    overrides = [f"task.{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in task.items()]
    cfg = load_config(None, overrides + [f"run.dir={run}"])
    torch.manual_seed(0)
    model = build_task(cfg.task).build_model()
    Checkpointer(Path(run) / "checkpoints").write(0, {"model": model.state_dict(), "ema": {}, "step": 0,
                                                     "config": to_dict(cfg)})
    return Path(run)


def lidar_classifier_run(workdir: Path) -> Path:
    return write_untrained_run(Path(workdir) / "lidar_classifier", {"name": "fusion", "mode": "lidar", **TINY})


def cilp_run(workdir: Path) -> Path:
    return write_untrained_run(Path(workdir) / "cilp", {"name": "cilp", **TINY})


def projector_run(workdir: Path) -> Path:
    return write_untrained_run(Path(workdir) / "projector", {
        "name": "cilp_projector", "cilp_run": str(cilp_run(workdir)),
        "lidar_classifier_run": str(lidar_classifier_run(workdir)), "hidden": [16]})
