"""Task ``fusion``: RGB + LiDAR cube/sphere classifiers (seed 003's fusion study) and unimodal baselines.

``task.mode``: ``late`` (vector embeddings concatenated), ``concat`` / ``add`` / ``mul`` (intermediate
fusion of the trunks' feature maps), or ``lidar`` / ``rgb`` (one modality; the ``lidar`` classifier's
trunk and head are what ``cilp_projector`` and ``rgb2lidar`` build on). ``task.downsample``:
``maxpool`` or ``stride`` (the embedder ablation). Cross-entropy loss; validation loss, accuracy (%) and
a confusion matrix over the whole validation set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.tasks.base import Task

from .data import SHARD_KEYS, CILPDataConfig, decode_pair
from .models import IntermediateFusion, LateFusion, UnimodalClassifier
from .visuals import confusion_image, input_grid

CLASS_NAMES = ["cube", "sphere"]
MODES = ("late", "concat", "add", "mul", "lidar", "rgb")


@dataclass
class FusionConfig(CILPDataConfig):
    """``task:`` section of a ``fusion`` run (plus the shared input settings of :class:`CILPDataConfig`)."""

    name: str = "fusion"
    mode: str = "late"
    downsample: str = "maxpool"
    emb_dim: int = 128

    def validate(self) -> None:
        super().validate()
        if self.mode not in MODES:
            raise ValueError(f"task.mode={self.mode!r} is not one of {list(MODES)}")
        if self.downsample not in ("maxpool", "stride"):
            raise ValueError(f"task.downsample={self.downsample!r} is not one of ['maxpool', 'stride']")


class ClassifierTask(Task):
    """Shared by the classification tasks: cross-entropy, accuracy, confusion matrix, input images."""

    uses_lidar = True

    def logits(self, model: nn.Module, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def losses(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss": F.cross_entropy(self.logits(model, batch).float(), batch["label"])}

    def metric_sums(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        logits = self.logits(model, batch).float()
        pred = logits.argmax(1)
        label = batch["label"]
        sums = {"loss_sum": F.cross_entropy(logits, label, reduction="sum").double(),
                "correct": (pred == label).sum().double(), "count": torch.tensor(float(len(label)))}
        k = self.cfg.num_classes
        cm = torch.bincount(label * k + pred, minlength=k * k).double()
        sums.update({f"cm_{i}_{j}": cm[i * k + j] for i in range(k) for j in range(k)})
        return sums

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("count", 0.0), 1.0)
        return {"loss": sums.get("loss_sum", 0.0) / n, "accuracy": 100.0 * sums.get("correct", 0.0) / n}

    def eval_images(self, sums: dict[str, float]) -> dict[str, torch.Tensor]:
        k = self.cfg.num_classes
        cm = np.array([[sums.get(f"cm_{i}_{j}", 0.0) for j in range(k)] for i in range(k)])
        return {"confusion_matrix": confusion_image(cm, CLASS_NAMES[:k] if k == 2 else [str(i) for i in range(k)])}

    def visuals(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return {"inputs": input_grid(batch["rgb"], batch.get("lidar"))}

    def decode_train(self, sample: dict, rng: np.random.Generator) -> dict:
        return decode_pair(sample, self.cfg, need_lidar=self.uses_lidar)


class FusionTask(ClassifierTask):
    """See module docstring."""

    name = "fusion"
    Config = FusionConfig
    shard_keys = SHARD_KEYS

    def __init__(self, cfg: FusionConfig):
        super().__init__(cfg)
        self.uses_lidar = cfg.mode != "rgb"

    def build_model(self) -> nn.Module:
        c = self.cfg
        if c.mode == "late":
            return LateFusion(4, c.lidar_channels, list(c.channels), c.emb_dim, num_classes=c.num_classes,
                              downsample=c.downsample, norm=c.norm)
        if c.mode in ("concat", "add", "mul"):
            return IntermediateFusion(4, c.lidar_channels, list(c.channels), c.mode, c.num_classes, c.downsample, c.norm)
        channels = c.lidar_channels if c.mode == "lidar" else 4
        return UnimodalClassifier(channels, list(c.channels), c.num_classes, downsample=c.downsample, norm=c.norm)

    def logits(self, model: nn.Module, batch: dict) -> torch.Tensor:
        if self.cfg.mode == "lidar":
            return model(batch["lidar"])
        if self.cfg.mode == "rgb":
            return model(batch["rgb"])
        return model(batch["rgb"], batch["lidar"])

    def exports(self, model: nn.Module, ema_model: nn.Module | None) -> dict[str, nn.Module]:
        out = {"classifier": ema_model if ema_model is not None else model}
        if self.cfg.mode in ("lidar", "rgb"):
            out["enc"] = model.trunk
        else:
            out["rgb_enc"], out["lidar_enc"] = model.rgb, model.lidar
        return out
