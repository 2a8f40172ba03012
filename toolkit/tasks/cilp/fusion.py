"""Task ``fusion``: RGB + LiDAR cube/sphere classifiers (seed 003's fusion study) and unimodal baselines.

``task.mode``: ``late`` (vector embeddings concatenated), ``concat`` / ``add`` / ``mul`` (intermediate
fusion of the trunks' feature maps), or ``lidar`` / ``rgb`` (one modality; the ``lidar`` classifier's
trunk and head are what ``cilp_projector`` and ``rgb2lidar`` build on). ``task.downsample``:
``maxpool`` or ``stride`` (the embedder ablation). Cross-entropy loss; validation loss, accuracy (%) and
a confusion matrix over the whole validation set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from toolkit.tasks.common.classification import ClassifierTask

from .data import CLASS_NAMES, SHARD_KEYS, CILPDataConfig, decode_pair
from .models import IntermediateFusion, LateFusion, UnimodalClassifier
from .visuals import input_grid

MODES = ("late", "concat", "add", "mul", "lidar", "rgb")
TITLES = {"late": "Late Fusion", "concat": "Int Fusion (Concat)", "add": "Int Fusion (Add)",
          "mul": "Int Fusion (Mul)", "lidar": "LiDAR Classifier", "rgb": "RGB Classifier"}


@dataclass
class FusionConfig(CILPDataConfig):
    """``task:`` section of a ``fusion`` run (plus the shared input settings of :class:`CILPDataConfig`)."""

    #: task name (selects this schema)
    name: str = "fusion"
    #: `late`, `concat`, `add`, `mul` (fusion variants), `lidar` or `rgb` (unimodal classifiers)
    mode: str = "late"
    #: trunk downsampling: `maxpool` or `stride` (strided convolutions, the ablation)
    downsample: str = "maxpool"
    #: embedding width before the classifier head
    emb_dim: int = 128

    def validate(self) -> None:
        super().validate()
        if self.mode not in MODES:
            raise ValueError(f"task.mode={self.mode!r} is not one of {list(MODES)}")
        if self.downsample not in ("maxpool", "stride"):
            raise ValueError(f"task.downsample={self.downsample!r} is not one of ['maxpool', 'stride']")


class PairClassifierTask(ClassifierTask):
    """A classifier of CILP pairs: decodes RGB (and LiDAR if ``uses_lidar``), shows the inputs."""

    uses_lidar = True
    class_names = CLASS_NAMES

    def decode_train(self, sample: dict, rng: np.random.Generator) -> dict:
        return decode_pair(sample, self.cfg, need_lidar=self.uses_lidar)

    def visuals(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return {"inputs": input_grid(batch["rgb"], batch.get("lidar"))}


class FusionTask(PairClassifierTask):
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

    def _inputs(self, batch: dict) -> tuple[torch.Tensor, ...]:
        if self.cfg.mode == "lidar":
            return (batch["lidar"],)
        if self.cfg.mode == "rgb":
            return (batch["rgb"],)
        return batch["rgb"], batch["lidar"]

    def logits(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(*self._inputs(batch))

    def exports(self, model: nn.Module) -> dict[str, nn.Module]:
        out = {"classifier": model}
        if self.cfg.mode in ("lidar", "rgb"):
            out["enc"] = model.trunk
        else:
            out["rgb_enc"], out["lidar_enc"] = model.rgb, model.lidar
        return out

    def export_inputs(self, batch: dict) -> dict[str, tuple[torch.Tensor, ...]]:
        inputs = {"classifier": self._inputs(batch)}
        if self.cfg.mode in ("lidar", "rgb"):
            inputs["enc"] = self._inputs(batch)
        else:
            inputs["rgb_enc"], inputs["lidar_enc"] = (batch["rgb"],), (batch["lidar"],)
        return inputs

    @classmethod
    def title(cls, task_cfg: dict) -> str:
        name = TITLES.get(task_cfg.get("mode"), str(task_cfg.get("mode")))
        return name + (", Strided Conv" if task_cfg.get("downsample") == "stride" else "")

    @classmethod
    def example(cls, workdir: Path, rng: np.random.Generator) -> tuple[dict, list[dict]]:
        from .example import TINY, example_samples

        return {"mode": "late", **TINY}, example_samples(rng)
