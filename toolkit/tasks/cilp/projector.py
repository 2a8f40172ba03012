"""Task ``cilp_projector``: map the frozen CILP image embedding to the LiDAR classifier's embedding.

The model holds the CILP image embedder (from ``task.cilp_run``, frozen), the LiDAR classifier's trunk
(from ``task.lidar_classifier_run``, a ``fusion`` run with ``mode: lidar``, frozen) and a trainable MLP
projector. Loss: mean squared error between ``projector(image_embedder(rgb))`` and the LiDAR trunk's
flattened embedding of the paired range image. Export: ``projector``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.tasks.base import Task
from toolkit.tasks.pretrained import load_run

from .data import SHARD_KEYS, CILPDataConfig, decode_pair
from .models import CILPModel, Frozen, Projector, UnimodalClassifier


@dataclass
class CILPProjectorConfig:
    """``task:`` section of a ``cilp_projector`` run."""

    name: str = "cilp_projector"
    cilp_run: str = "runs/cilp"
    lidar_classifier_run: str = "runs/cilp_lidar_classifier"
    weights: str = "ema"
    hidden: list[int] = field(default_factory=lambda: [1000, 500])


def _data_config(task: dict) -> CILPDataConfig:
    keys = ("lidar_input", "max_range_m", "range_scale_m", "channels", "num_classes", "norm")
    return CILPDataConfig(**{k: task[k] for k in keys if k in task})


def load_cilp(source: str, weights: str) -> tuple[CILPModel, CILPDataConfig]:
    """The trained CILP model of a run and its input settings."""
    state, config = load_run(source, weights)
    task = dict(config["task"])
    data = _data_config(task)
    model = CILPModel(4, data.lidar_channels, list(data.channels), task["emb_dim"], task["hidden"],
                      norm=data.norm)
    model.load_state_dict(state)
    return model, data


def load_lidar_classifier(source: str, weights: str) -> tuple[UnimodalClassifier, CILPDataConfig]:
    """The trained LiDAR classifier (``fusion`` with ``mode: lidar``) of a run and its input settings.

    Raises:
        ValueError: if that run is not a LiDAR-only ``fusion`` run.
    """
    state, config = load_run(source, weights)
    task = dict(config["task"])
    if task.get("name") != "fusion" or task.get("mode") != "lidar":
        raise ValueError(f"'{source}' is not a LiDAR classifier (a fusion run with mode: lidar)")
    data = _data_config(task)
    model = UnimodalClassifier(data.lidar_channels, list(data.channels), data.num_classes, downsample=task["downsample"],
                               norm=data.norm)
    model.load_state_dict(state)
    return model, data


class ProjectorModel(nn.Module):
    """Frozen image embedder -> trainable projector; frozen LiDAR trunk for the target."""

    def __init__(self, image_embedder: nn.Module, lidar_trunk: nn.Module, projector: Projector):
        super().__init__()
        self.image_embedder = Frozen(image_embedder)
        self.lidar_trunk = Frozen(lidar_trunk)
        self.projector = projector

    def forward(self, rgb: torch.Tensor, lidar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.projector(self.image_embedder(rgb)), self.lidar_trunk(lidar).flatten(1)


class CILPProjectorTask(Task):
    """See module docstring."""

    name = "cilp_projector"
    Config = CILPProjectorConfig
    shard_keys = SHARD_KEYS

    def __init__(self, cfg: CILPProjectorConfig):
        super().__init__(cfg)
        self._cilp, self.cilp_data = load_cilp(cfg.cilp_run, cfg.weights)
        self._classifier, self.lidar_data = load_lidar_classifier(cfg.lidar_classifier_run, cfg.weights)

    def build_model(self) -> ProjectorModel:
        emb_dim = self._cilp.image.head[-1].out_features
        projector = Projector(emb_dim, self._classifier.embed_dim, list(self.cfg.hidden))
        return ProjectorModel(self._cilp.image, self._classifier.trunk, projector)

    def decode_train(self, sample: dict, rng: np.random.Generator) -> dict:
        # the LiDAR input in the classifier's encoding; the image is encoded the same way for every stage
        return decode_pair(sample, self.lidar_data)

    def losses(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        pred, target = model(batch["rgb"], batch["lidar"])
        return {"loss": F.mse_loss(pred.float(), target.float())}

    def metric_sums(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        pred, target = model(batch["rgb"], batch["lidar"])
        n = pred.shape[0]
        return {"loss_sum": F.mse_loss(pred.float(), target.float()).double() * n, "count": torch.tensor(float(n))}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {"loss": sums.get("loss_sum", 0.0) / max(sums.get("count", 0.0), 1.0)}

    def exports(self, model: nn.Module, ema_model: nn.Module | None) -> dict[str, nn.Module]:
        return {"projector": (ema_model if ema_model is not None else model).projector}
