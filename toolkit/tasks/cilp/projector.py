"""Task ``cilp_projector``: map the frozen CILP image embedding to the LiDAR classifier's embedding.

The model holds the CILP image embedder (from ``task.cilp_run``, frozen), the LiDAR classifier's trunk
(from ``task.lidar_classifier_run``, a ``fusion`` run with ``mode: lidar``, frozen) and a trainable MLP
projector. Loss: mean squared error between ``projector(image_embedder(rgb))`` and the LiDAR trunk's
flattened embedding of the paired range image. Export: ``projector``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.tasks.base import EvalOutput, StepOutput, Task
from toolkit.tasks.common.frozen import Frozen

from .data import SHARD_KEYS, decode_pair
from .models import Projector
from .stages import load_cilp, load_lidar_classifier


@dataclass
class CILPProjectorConfig:
    """``task:`` section of a ``cilp_projector`` run."""

    #: task name (selects this schema)
    name: str = "cilp_projector"
    #: the trained cilp run whose image embedder is frozen
    cilp_run: str = "runs/cilp"
    #: the trained LiDAR classifier run whose trunk gives the target embeddings
    lidar_classifier_run: str = "runs/cilp_lidar_classifier"
    #: which weights of those runs are loaded: `ema` or `model`
    weights: str = "ema"
    #: hidden widths of the projector MLP
    hidden: list[int] = field(default_factory=lambda: [1000, 500])


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

    def losses(self, model: nn.Module, batch: dict) -> StepOutput:
        pred, target = model(batch["rgb"], batch["lidar"])
        return StepOutput({"loss": F.mse_loss(pred.float(), target.float())})

    def evaluate_batch(self, model: nn.Module, batch: dict) -> EvalOutput:
        pred, target = model(batch["rgb"], batch["lidar"])
        n = pred.shape[0]
        return EvalOutput(sums={"loss_sum": F.mse_loss(pred.float(), target.float()).double() * n,
                                "count": torch.tensor(float(n))})

    def metrics(self, sums: dict[str, float], features: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"loss": sums.get("loss_sum", 0.0) / max(sums.get("count", 0.0), 1.0)}

    def exports(self, model: nn.Module) -> dict[str, nn.Module]:
        return {"projector": model.projector}

    def export_inputs(self, batch: dict) -> dict[str, tuple[torch.Tensor, ...]]:
        return {"projector": (self._cilp.image(batch["rgb"]),)}

    @classmethod
    def title(cls, task_cfg: dict) -> str:
        return "Cross-Modal Projector"

    @classmethod
    def example(cls, workdir: Path, rng: np.random.Generator) -> tuple[dict, list[dict]]:
        from .example import cilp_run, example_samples, lidar_classifier_run

        return ({"cilp_run": str(cilp_run(workdir)), "lidar_classifier_run": str(lidar_classifier_run(workdir)),
                 "hidden": [16]}, example_samples(rng))
