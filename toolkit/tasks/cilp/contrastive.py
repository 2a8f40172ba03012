"""Task ``cilp``: contrastive image-LiDAR pretraining (CLIP-style) of an image and a LiDAR embedder.

Symmetric InfoNCE with a learnable temperature: ``logit_scale`` starts at ln(1/0.07) and is clamped to
[0, ln 100] after every optimizer step (CLIP; open_clip). Under N processes the loss gathers the
embeddings of all ranks with gradients and takes a local loss (:mod:`toolkit.tasks.cilp.loss`).
Validation: the loss per batch of ``data.val_batch_size`` pairs (its value depends on the batch size:
chance level is ln(batch)), top-1 retrieval accuracy image->LiDAR and LiDAR->image within the batch
(``retrieval_i2l``/``retrieval_l2i``), and retrieval over the whole validation set from the gathered
embeddings (``i2l_recall@k``/``l2i_recall@k`` for k = 1, 5, 10; chance k / N, ``retrieval_pairs`` = N),
as open_clip's ``evaluate``.

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
from pathlib import Path

import numpy as np
import torch
from torch import nn

from toolkit.tasks.base import EvalOutput, StepOutput, Task
from toolkit.tasks.common.retrieval import recall_at_k

from .data import SHARD_KEYS, CILPDataConfig, decode_pair
from .loss import clip_loss
from .models import CILPModel
from .visuals import input_grid, similarity_image


@dataclass
class CILPConfig(CILPDataConfig):
    """``task:`` section of a ``cilp`` run."""

    #: task name (selects this schema)
    name: str = "cilp"
    #: contrastive embedding width
    emb_dim: int = 200
    #: hidden width of the embedding heads
    hidden: int = 100
    #: initial CLIP logit scale, ln(1/0.07) (CLIP)
    init_logit_scale: float = math.log(1 / 0.07)
    #: clamp of the learnable logit scale, ln 100 (CLIP)
    max_logit_scale: float = math.log(100.0)
    #: a LiDAR classifier run (fusion with mode lidar) whose trunk is loaded and locked (LiT); "" = train the trunk
    lidar_trunk_run: str = ""


class CILPTask(Task):
    """See module docstring."""

    name = "cilp"
    Config = CILPConfig
    shard_keys = SHARD_KEYS

    def build_model(self) -> CILPModel:
        c = self.cfg
        model = CILPModel(4, c.lidar_channels, list(c.channels), c.emb_dim, c.hidden, c.init_logit_scale, c.norm)
        if c.lidar_trunk_run:
            from .stages import load_lidar_classifier

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

    def losses(self, model: nn.Module, batch: dict) -> StepOutput:
        img, lidar, scale = model(batch["rgb"], batch["lidar"])
        return StepOutput({"loss": clip_loss(img.float(), lidar.float(), scale.float())}, {"logit_scale": scale})

    def after_optimizer_step(self, model: nn.Module) -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, self.cfg.max_logit_scale)

    def evaluate_batch(self, model: nn.Module, batch: dict) -> EvalOutput:
        img, lidar, scale = model(batch["rgb"], batch["lidar"])
        n = img.shape[0]
        logits = scale * img @ lidar.T
        target = torch.arange(n, device=img.device)
        loss = clip_loss(img, lidar, scale, gather=False)
        sums = {"loss_sum": loss.double() * n, "count": torch.tensor(float(n)),
                "i2l_correct": (logits.argmax(1) == target).sum().double(),
                "l2i_correct": (logits.argmax(0) == target).sum().double()}
        return EvalOutput(sums=sums, features={"img": img, "lidar": lidar})

    def metrics(self, sums: dict[str, float], features: dict[str, torch.Tensor]) -> dict[str, float]:
        n = max(sums.get("count", 0.0), 1.0)
        out = {"loss": sums.get("loss_sum", 0.0) / n, "retrieval_i2l": 100.0 * sums.get("i2l_correct", 0.0) / n,
               "retrieval_l2i": 100.0 * sums.get("l2i_correct", 0.0) / n}
        if "img" in features:
            img, lidar = features["img"], features["lidar"]
            for name, (query, gallery) in (("i2l", (img, lidar)), ("l2i", (lidar, img))):
                out.update({f"{name}_recall@{k}": v for k, v in recall_at_k(query, gallery, (1, 5, 10)).items()})
            out["retrieval_pairs"] = float(len(img))
        return out

    def visuals(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        img, lidar, scale = model(batch["rgb"], batch["lidar"])
        return {"similarity": similarity_image(scale * img @ lidar.T), "inputs": input_grid(batch["rgb"], batch["lidar"])}

    def exports(self, model: nn.Module) -> dict[str, nn.Module]:
        return {"img_enc": model.image, "lidar_enc": model.lidar}

    def export_inputs(self, batch: dict) -> dict[str, tuple[torch.Tensor, ...]]:
        return {"img_enc": (batch["rgb"],), "lidar_enc": (batch["lidar"],)}

    def info(self, model: nn.Module) -> dict[str, float]:
        return {"init_logit_scale": float(model.logit_scale.detach().exp())}

    @classmethod
    def title(cls, task_cfg: dict) -> str:
        return "CILP (Contrastive Pretraining)"

    @classmethod
    def example(cls, workdir: Path, rng: np.random.Generator) -> tuple[dict, list[dict]]:
        """Tiny towers with the LiDAR trunk locked to an (untrained) LiDAR classifier run's."""
        from .example import TINY, example_samples, lidar_classifier_run

        return {**TINY, "lidar_trunk_run": str(lidar_classifier_run(workdir))}, example_samples(rng)
