"""Task ``cilp``: contrastive image-LiDAR pretraining (CLIP-style) of an image and a LiDAR embedder.

Symmetric InfoNCE with a learnable temperature: ``logit_scale`` starts at ln(1/0.07) and is clamped to
[0, ln 100] after every optimizer step (CLIP; open_clip). Under N processes the loss gathers the
embeddings of all ranks with gradients and takes a local loss (:mod:`toolkit.tasks.cilp.loss`).
Validation: the loss per batch of ``data.val_batch_size`` pairs (its value depends on the batch size:
chance level is ln(batch)) and top-1 retrieval accuracy image->LiDAR and LiDAR->image within the batch.

``task.lidar_trunk_run`` (a LiDAR classifier run, ``fusion`` with ``mode: lidar``) loads that classifier's
trunk into the LiDAR tower and locks it (weights and BatchNorm statistics fixed; its head, the image tower
and the temperature train): LiT-style locked-tower tuning (Zhai et al., "LiT: Zero-Shot Transfer with
Locked-image text Tuning", CVPR 2022), here with the LiDAR tower locked. The image embedding then has to
match features that were trained to tell the shapes apart, which the downstream ``rgb2lidar`` needs.
Raises ``ValueError`` at model build if that run's ``lidar_input``, ``channels`` or ``norm`` differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from toolkit.tasks.base import Task

from .data import SHARD_KEYS, CILPDataConfig, decode_pair
from .loss import clip_loss
from .models import CILPModel
from .visuals import input_grid, similarity_image


@dataclass
class CILPConfig(CILPDataConfig):
    """``task:`` section of a ``cilp`` run."""

    name: str = "cilp"
    emb_dim: int = 200
    hidden: int = 100
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100.0)
    lidar_trunk_run: str = ""      # a LiDAR classifier run whose trunk is loaded and locked (LiT); "" = train it


class CILPTask(Task):
    """See module docstring."""

    name = "cilp"
    Config = CILPConfig
    shard_keys = SHARD_KEYS

    def build_model(self) -> CILPModel:
        c = self.cfg
        model = CILPModel(4, c.lidar_channels, list(c.channels), c.emb_dim, c.hidden, c.init_logit_scale, c.norm)
        if c.lidar_trunk_run:
            from .projector import load_lidar_classifier

            classifier, data = load_lidar_classifier(c.lidar_trunk_run, "ema")
            mine = (c.lidar_input, list(c.channels), c.norm)
            theirs = (data.lidar_input, list(data.channels), data.norm)
            if mine != theirs:
                raise ValueError(f"task.lidar_trunk_run={c.lidar_trunk_run!r} has (lidar_input, channels, norm) = "
                                 f"{theirs}, this run {mine}: they must match")
            model.lock_lidar_trunk(classifier.trunk.state_dict())
        return model

    def decode_train(self, sample: dict, rng: np.random.Generator) -> dict:
        return decode_pair(sample, self.cfg)

    def losses(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        img, lidar, scale = model(batch["rgb"], batch["lidar"])
        return {"loss": clip_loss(img.float(), lidar.float(), scale.float()), "logit_scale": scale.detach()}

    def after_optimizer_step(self, model: nn.Module) -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, self.cfg.max_logit_scale)

    def metric_sums(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        img, lidar, scale = model(batch["rgb"], batch["lidar"])
        n = img.shape[0]
        logits = scale * img @ lidar.T
        target = torch.arange(n, device=img.device)
        loss = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2
        return {"loss_sum": loss.double() * n, "count": torch.tensor(float(n)),
                "i2l_correct": (logits.argmax(1) == target).sum().double(),
                "l2i_correct": (logits.argmax(0) == target).sum().double()}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("count", 0.0), 1.0)
        return {"loss": sums.get("loss_sum", 0.0) / n, "retrieval_i2l": 100.0 * sums.get("i2l_correct", 0.0) / n,
                "retrieval_l2i": 100.0 * sums.get("l2i_correct", 0.0) / n}

    def visuals(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        img, lidar, scale = model(batch["rgb"], batch["lidar"])
        return {"similarity": similarity_image(scale * img @ lidar.T), "inputs": input_grid(batch["rgb"], batch["lidar"])}

    def exports(self, model: nn.Module, ema_model: nn.Module | None) -> dict[str, nn.Module]:
        m = ema_model if ema_model is not None else model
        return {"img_enc": m.image, "lidar_enc": m.lidar}

    def info(self, model: nn.Module) -> dict[str, float]:
        return {"init_logit_scale": float(model.logit_scale.detach().exp())}
