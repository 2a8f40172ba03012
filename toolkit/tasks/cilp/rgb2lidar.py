"""Task ``rgb2lidar``: classify cubes and spheres from RGB alone through the LiDAR classifier's head.

frozen CILP image embedder (``task.cilp_run``) -> projector (trainable, initialised from
``task.projector_run``) -> frozen LiDAR classifier head (``task.lidar_classifier_run``). Trained on RGB
only with cross-entropy; the frozen parts get no gradients, stay in eval mode and are not in the
optimizer (asserted by ``tests/test_cilp.py``). Export: ``classifier`` (RGB -> logits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from toolkit.tasks.pretrained import load_run, sub_state

from .data import decode_pair
from .fusion import ClassifierTask
from .models import Frozen, Projector
from .projector import load_cilp, load_lidar_classifier


@dataclass
class RGB2LiDARConfig:
    """``task:`` section of an ``rgb2lidar`` run."""

    name: str = "rgb2lidar"
    cilp_run: str = "runs/cilp"
    projector_run: str = "runs/cilp_projector"
    lidar_classifier_run: str = "runs/cilp_lidar_classifier"
    weights: str = "ema"
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


class RGB2LiDARTask(ClassifierTask):
    """See module docstring."""

    name = "rgb2lidar"
    Config = RGB2LiDARConfig
    shard_keys = ("rgb.png", "cls")
    uses_lidar = False

    def __init__(self, cfg: RGB2LiDARConfig):
        super().__init__(cfg)
        self._cilp, self.cilp_data = load_cilp(cfg.cilp_run, cfg.weights)
        self._classifier, _ = load_lidar_classifier(cfg.lidar_classifier_run, cfg.weights)
        state, config = load_run(cfg.projector_run, cfg.weights)
        hidden = list(config["task"]["hidden"])
        emb_dim = self._cilp.image.head[-1].out_features
        self._projector = Projector(emb_dim, self._classifier.embed_dim, hidden)
        self._projector.load_state_dict(sub_state(state, "projector"))

    def build_model(self) -> RGB2LiDAR:
        return RGB2LiDAR(self._cilp.image, self._projector, self._classifier.head)

    def decode_train(self, sample: dict, rng: np.random.Generator) -> dict:
        return decode_pair(sample, self.cilp_data, need_lidar=False)

    def logits(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["rgb"])

    def exports(self, model: nn.Module, ema_model: nn.Module | None) -> dict[str, nn.Module]:
        return {"classifier": _Export(ema_model if ema_model is not None else model)}
