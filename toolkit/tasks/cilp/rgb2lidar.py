"""Task ``rgb2lidar``: classify cubes and spheres from RGB alone through the LiDAR classifier's head.

frozen CILP image embedder (``task.cilp_run``) -> projector (trainable, initialised from
``task.projector_run``) -> frozen LiDAR classifier head (``task.lidar_classifier_run``). Trained on RGB
only with cross-entropy; the frozen parts get no gradients, stay in eval mode and are not in the
optimizer (asserted by ``tests/test_cilp.py``). Export: ``classifier`` (RGB -> logits).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from toolkit.engine.checkpoint import load_trained_model
from toolkit.tasks.common.frozen import Frozen

from .data import decode_pair
from .fusion import PairClassifierTask
from .stages import load_cilp, load_lidar_classifier


@dataclass
class RGB2LiDARConfig:
    """``task:`` section of an ``rgb2lidar`` run."""

    #: task name (selects this schema)
    name: str = "rgb2lidar"
    #: the trained cilp run whose image embedder is frozen
    cilp_run: str = "runs/cilp"
    #: the trained cilp_projector run (its projector is fine-tuned)
    projector_run: str = "runs/cilp_projector"
    #: the trained LiDAR classifier run whose head is frozen
    lidar_classifier_run: str = "runs/cilp_lidar_classifier"
    #: which weights of those runs are loaded: `ema` or `model`
    weights: str = "ema"
    #: classes of the classifier head
    num_classes: int = 2


class RGB2LiDAR(nn.Module):
    """(B, 4, 64, 64) RGBA -> (B, classes) logits."""

    def __init__(self, image_embedder: nn.Module, projector: nn.Module, head: nn.Module):
        super().__init__()
        self.image_embedder = Frozen(image_embedder)
        self.projector = projector
        self.head = Frozen(head)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.head(self.projector(self.image_embedder(rgb)))


class _Export(nn.Module):
    """Scriptable RGB -> logits (the frozen wrappers unwrapped)."""

    def __init__(self, m: RGB2LiDAR):
        super().__init__()
        self.image_embedder, self.projector, self.head = m.image_embedder.module, m.projector, m.head.module

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.head(self.projector(self.image_embedder(rgb)))


class RGB2LiDARTask(PairClassifierTask):
    """See module docstring."""

    name = "rgb2lidar"
    Config = RGB2LiDARConfig
    shard_keys = ("rgb.png", "cls")
    uses_lidar = False

    def __init__(self, cfg: RGB2LiDARConfig):
        super().__init__(cfg)
        self._cilp, self.cilp_data = load_cilp(cfg.cilp_run, cfg.weights)
        self._classifier, _ = load_lidar_classifier(cfg.lidar_classifier_run, cfg.weights)
        projector = load_trained_model(cfg.projector_run, cfg.weights)
        if projector.config.task.name != "cilp_projector":
            raise ValueError(f"task.projector_run={cfg.projector_run!r} is a {projector.config.task.name!r} run, "
                             "not a cilp_projector run")
        self._projector = projector.model.projector

    def build_model(self) -> RGB2LiDAR:
        return RGB2LiDAR(self._cilp.image, self._projector, self._classifier.head)

    def decode_train(self, sample: dict, rng: np.random.Generator) -> dict:
        return decode_pair(sample, self.cilp_data, need_lidar=False)

    def logits(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["rgb"])

    def exports(self, model: nn.Module) -> dict[str, nn.Module]:
        return {"classifier": _Export(model)}

    def export_inputs(self, batch: dict) -> dict[str, tuple[torch.Tensor, ...]]:
        return {"classifier": (batch["rgb"],)}

    @classmethod
    def title(cls, task_cfg: dict) -> str:
        return "RGB → LiDAR Fine-Tuning"

    @classmethod
    def example(cls, workdir: Path, rng: np.random.Generator) -> tuple[dict, list[dict]]:
        from .example import cilp_run, example_samples, lidar_classifier_run, projector_run

        return ({"cilp_run": str(cilp_run(workdir)), "lidar_classifier_run": str(lidar_classifier_run(workdir)),
                 "projector_run": str(projector_run(workdir))}, example_samples(rng))
