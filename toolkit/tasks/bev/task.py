"""Task ``bev``: BEV vehicle segmentation from six cameras (+ LiDAR), Simple-BEV lifting and FIERY heads.

Data: multi-sensor shards (``python -m shards nuscenes``, :mod:`toolkit.data.multisensor`); the decode
(images resized, with Simple-BEV's scale/crop jitter in training, intrinsics updated; points; targets on
the task's grid) is :class:`~toolkit.data.multisensor.MultiSensorDecoder` with ``task.sample``.
Training may drop cameras (``ncams`` < 6: a random subset per sample, Simple-BEV's ``ncams``).

Model: :class:`~toolkit.tasks.bev.model.BEVSegNet`. Losses (:mod:`toolkit.tasks.bev.losses`): seg BCE with
``pos_weight`` over valid cells, balanced-MSE centre, L1 offset over instance cells; weighted by learned
uncertainties (``loss_weighting: uncertainty``, Kendall et al. 2018 in FIERY's form, ``seg_scale`` 10 =
Simple-BEV) or fixed (``seg_scale`` on seg, 1 on the others). Logged: every raw term (``train/raw_*``), every
log-variance (``train/logvar_*``), sigma (``train/sigma_*``) and effective weight (``train/weight_*``).

Metrics (:mod:`toolkit.tasks.bev.metrics`): ``val/iou`` (visibility-filtered global IoU, Simple-BEV),
``val/iou_30m`` (30 x 30 m around the ego), ``val/iou_all`` (no filter, LSS/FIERY literature setting), and
the raw validation losses. Exports: ``model`` (images, intrinsics, cam2ego, points, points_mask) ->
(B, 4, R, C) = seg logit, centre, 2 offset channels; ``encoder`` (N, 3, H, W) -> (N, C, H/8, W/8).
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from toolkit.data.multisensor import SHARD_KEYS, MultiSensorConfig, MultiSensorDecoder
from toolkit.tasks.base import EvalOutput, StepOutput, Task

from .encoder import ENCODERS
from .losses import HEADS, balanced_mse, offset_loss, seg_loss, uncertainty_weighted
from .metrics import iou_from_sums, iou_sums
from .model import INPUTS, BEVSegNet
from .visuals import bev_panels, camera_grid


def _tiny_sample() -> MultiSensorConfig:
    return MultiSensorConfig(image_height=96, image_width=176, augment=True, max_points=20000,
                             x_bounds=[-32.0, 32.0], y_bounds=[-32.0, 32.0], resolution=0.5,
                             z_bounds=[-1.0, 4.0], z_cells=5)


@dataclass
class BEVConfig:
    """``task:`` section of a ``bev`` run."""

    #: task name (selects this schema)
    name: str = "bev"
    #: `cam`, `lidar` or `cam+lidar` (Simple-BEV's C, L, C+L)
    inputs: str = "cam"
    #: image trunk: `resnet18`, `resnet34`, `resnet50`, `resnet101`, `effb0`, `effb4` (efficientnet-pytorch) or `tiny`
    encoder: str = "tiny"
    #: stem width of the image trunk (ResNet 64); >= 1
    encoder_base: int = 16
    #: C of the image and BEV features (Simple-BEV 128); >= 1
    feat_channels: int = 32
    #: the encoder's merge width (Simple-BEV 512); >= 1
    merge_channels: int = 64
    #: a local .pt state dict for the image trunk (torchvision ResNet names); "" = random init; the file must exist
    encoder_weights: str = ""
    #: FIERY decoder trunk width (64); >= 1
    decoder_width: int = 16
    #: decoder normalisation: `instance` (Simple-BEV) or `batch` (FIERY)
    decoder_norm: str = "instance"
    #: `uncertainty` (learned, Kendall et al.) or `fixed`
    loss_weighting: str = "uncertainty"
    #: factor on the segmentation term (Simple-BEV 10)
    seg_scale: float = 1.0
    #: segmentation BCE positive weight (Simple-BEV 2.13)
    pos_weight: float = 2.13
    #: initial vehicle probability of the segmentation head (RetinaNet's prior initialisation); 0 = none; in [0, 1)
    seg_prior: float = 0.0
    #: cameras per training sample (a random subset when < 6; evaluation uses all); 1..6
    ncams: int = 6
    #: half side of the short-range IoU square, m (FIERY's 30 x 30 m: 15)
    near_m: float = 15.0
    #: how samples are decoded: image size, jitter, points, BEV grid and targets (targets must be true)
    sample: MultiSensorConfig = field(default_factory=_tiny_sample)

    def validate(self) -> None:
        if self.inputs not in INPUTS:
            raise ValueError(f"task.inputs must be one of {list(INPUTS)}, got {self.inputs!r}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"task.encoder must be one of {list(ENCODERS)}, got {self.encoder!r}")
        if self.loss_weighting not in ("uncertainty", "fixed"):
            raise ValueError(f"task.loss_weighting must be 'uncertainty' or 'fixed', got {self.loss_weighting!r}")
        if not 0.0 <= self.seg_prior < 1.0:
            raise ValueError(f"task.seg_prior must be in [0, 1), got {self.seg_prior}")
        if not 1 <= self.ncams <= 6:
            raise ValueError(f"task.ncams must be in 1..6, got {self.ncams}")
        if self.encoder_weights and not Path(self.encoder_weights).is_file():
            raise ValueError(f"task.encoder_weights: no file '{self.encoder_weights}'")
        for name in ("feat_channels", "merge_channels", "decoder_width", "encoder_base"):
            if getattr(self, name) < 1:
                raise ValueError(f"task.{name} must be >= 1, got {getattr(self, name)}")
        if self.inputs != "lidar" and (self.sample.image_height % 16 or self.sample.image_width % 16
                                       or not self.sample.image_height):
            raise ValueError(f"task.sample.image_height/image_width must be multiples of 16, got "
                             f"{self.sample.image_height} x {self.sample.image_width}")
        if self.inputs != "cam" and not self.sample.max_points:
            raise ValueError(f"task.inputs={self.inputs} needs LiDAR points: task.sample.max_points must be > 0")
        if not self.sample.targets:
            raise ValueError("task.sample.targets must be true for training a bev model")
        try:
            self.sample.validate()
            rows, cols = self.sample.grid().shape
        except ValueError as exc:
            raise ValueError(f"task.sample: {exc}") from exc
        if rows % 8 or cols % 8:
            raise ValueError(f"task.sample grid is {rows} x {cols} cells; both must be multiples of 8")


class BEVExport(nn.Module):
    """Scriptable whole model: (images (B, S, 3, H, W) float [0, 1], intrinsics (B, S, 3, 3) px, cam2ego
    (B, S, 4, 4), points (B, N, 5) ego m, points_mask (B, N) float) -> (B, 4, R, C): seg logit, centre,
    offset row, offset col."""

    def __init__(self, net: BEVSegNet):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor, intrinsics: torch.Tensor, cam2ego: torch.Tensor, points: torch.Tensor,
                points_mask: torch.Tensor) -> torch.Tensor:
        seg, center, offset = self.net(images, intrinsics, cam2ego, points, points_mask)
        return torch.cat([seg, center, offset], 1)


class BEVTask(Task):
    name = "bev"
    Config = BEVConfig
    shard_keys = SHARD_KEYS
    report_columns = (("IoU (vis. filtered)", "val_ema/iou", ".4f"), ("IoU 30 x 30 m", "val_ema/iou_30m", ".4f"),
                      ("IoU (unfiltered)", "val_ema/iou_all", ".4f"))

    def __init__(self, cfg: BEVConfig):
        super().__init__(cfg)
        sample = dataclasses.replace(cfg.sample, image_dtype="uint8",
                                     max_points=cfg.sample.max_points if cfg.inputs != "cam" else 0)
        self._train = MultiSensorDecoder(sample)
        self._eval = MultiSensorDecoder(dataclasses.replace(sample, augment=False))
        grid = sample.grid()
        rows, cols = grid.shape
        centres = grid.cell_centers()
        self._near = torch.from_numpy((np.abs(centres[..., 0]) <= cfg.near_m) & (np.abs(centres[..., 1]) <= cfg.near_m))
        self._grid = grid

    # --- model --------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        c = self.cfg
        net = BEVSegNet(self._grid, (c.sample.image_height, c.sample.image_width), c.inputs, c.encoder, c.encoder_base,
                        c.feat_channels, c.merge_channels, c.decoder_width, c.decoder_norm,
                        uncertainty=c.loss_weighting == "uncertainty", seg_prior=c.seg_prior)
        if c.encoder_weights and c.inputs != "lidar":
            state = torch.load(c.encoder_weights, map_location="cpu", weights_only=True)
            missing, _ = net.encoder.trunk.load_state_dict(state, strict=False)
            if len(missing) == len(net.encoder.trunk.state_dict()):
                raise ValueError(f"task.encoder_weights '{c.encoder_weights}' has none of the {c.encoder} trunk's keys")
        return net

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """The image trunk's stages, the feature merge, the BEV compressor and the decoder's stages and
        upsamplers, less those holding BatchNorm (a checkpointed block's recomputation would update
        the running statistics twice)."""
        enc, dec = model.encoder, model.decoder
        trunk = getattr(enc, "trunk", None)
        stages = list(trunk.children()) if trunk is not None else []
        candidates = [*stages, getattr(enc, "merge", None), model.compressor, dec.layer1, dec.layer2, dec.layer3,
                      dec.up3, dec.up2, dec.up1]
        return [b for b in candidates if b is not None and not any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in b.modules())]

    # --- data ---------------------------------------------------------------------------------
    @staticmethod
    def _keep(sample: dict) -> dict:
        sample.pop("ego2global", None)  # the sample key (``key``, a string) stays: predictions are named by it
        return sample

    def decode_train(self, sample: dict, rng: np.random.Generator) -> dict:
        out = self._keep(self._train(sample, rng))
        S = out["images"].shape[0]
        if self.cfg.ncams < S:
            pick = np.sort(rng.choice(S, self.cfg.ncams, replace=False))
            for k in ("images", "intrinsics", "cam2ego"):
                out[k] = out[k][pick]
        return out

    def decode_eval(self, sample: dict, rng: np.random.Generator) -> dict:
        return self._keep(self._eval(sample, rng))

    @staticmethod
    def _inputs(batch: dict) -> tuple[torch.Tensor, ...]:
        """The model's inputs of a decoded batch: images in [0, 1], intrinsics, cam2ego, points (B, N, 5) and
        their mask (empty (B, 0, ...) without LiDAR)."""
        images = batch["images"].float() / 255.0
        B = images.shape[0]
        if "points" in batch:
            points, mask = batch["points"][..., :5].float(), batch["points_mask"].float()
        else:
            points, mask = images.new_zeros(B, 0, 5), images.new_zeros(B, 0)
        return images, batch["intrinsics"].float(), batch["cam2ego"].float(), points, mask

    def _forward(self, model: nn.Module, batch: dict):
        return model(*self._inputs(batch))

    # --- training -------------------------------------------------------------------------------
    def _raw_losses(self, out, batch) -> dict[str, torch.Tensor]:
        seg, center, offset = (o.float() for o in out)
        return {"seg": seg_loss(seg, batch["seg"], batch["valid"], self.cfg.pos_weight),
                "center": balanced_mse(center, batch["center"]),
                "offset": offset_loss(offset, batch["offset"], batch["seg"], batch["valid"])}

    def losses(self, model: nn.Module, batch: dict) -> StepOutput:
        raw = self._raw_losses(self._forward(model, batch), batch)
        logs = {f"raw_{k}": v.detach() for k, v in raw.items()}
        net = model.module if hasattr(model, "module") else model
        if self.cfg.loss_weighting == "uncertainty":
            log_vars = net.weights.as_dict()
            terms = uncertainty_weighted(raw, log_vars, self.cfg.seg_scale)
            for k in HEADS:
                w = log_vars[k].detach()
                logs[f"logvar_{k}"] = w
                logs[f"sigma_{k}"] = torch.exp(0.5 * w)
                logs[f"weight_{k}"] = (self.cfg.seg_scale if k == "seg" else 0.5) * torch.exp(-w)
        else:
            terms = {k: (self.cfg.seg_scale if k == "seg" else 1.0) * v for k, v in raw.items()}
        return StepOutput(terms, logs)

    # --- evaluation -------------------------------------------------------------------------------
    def evaluate_batch(self, model: nn.Module, batch: dict) -> EvalOutput:
        out = self._forward(model, batch)
        raw = self._raw_losses(out, batch)
        B = float(batch["seg"].shape[0])
        sums = iou_sums(out[0], batch["seg"], batch["valid"], self._near)
        sums.update({f"raw_{k}": v.double() * B for k, v in raw.items()})
        sums["samples"] = torch.tensor(B, dtype=torch.float64)
        return EvalOutput(sums=sums)

    def metrics(self, sums: dict[str, float], features: dict[str, torch.Tensor]) -> dict[str, float]:
        n = max(sums.get("samples", 0.0), 1.0)
        out = iou_from_sums(sums)
        out.update({f"loss_{k}": sums[f"raw_{k}"] / n for k in HEADS if f"raw_{k}" in sums})
        return out

    def visuals(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        seg, center, offset = self._forward(model, {k: v[:1] for k, v in batch.items()})
        out = {"bev_pred_vs_target": bev_panels(seg[0], center[0], offset[0],
                                                {k: batch[k][0] for k in ("seg", "valid", "center", "offset")})}
        if "images" in batch and batch["images"].shape[1]:
            out["cameras"] = camera_grid(batch["images"][0].float() / 255.0)
        return out

    # --- export ---------------------------------------------------------------------------------
    def exports(self, model: nn.Module) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {"model": BEVExport(model)}
        if self.cfg.inputs != "lidar":
            out["encoder"] = model.encoder
        return out

    def export_inputs(self, batch: dict) -> dict[str, tuple[torch.Tensor, ...]]:
        inputs = self._inputs(batch)
        out = {"model": inputs}
        if self.cfg.inputs != "lidar":
            out["encoder"] = (inputs[0].flatten(0, 1),)
        return out

    def info(self, model: nn.Module) -> dict[str, float]:
        rows, cols = self._grid.shape
        return {"bev_rows": float(rows), "bev_cols": float(cols), "parameters": float(sum(p.numel() for p in model.parameters()))}

    @classmethod
    def title(cls, task_cfg: dict) -> str:
        return f"BEV {task_cfg.get('inputs', 'cam')} ({task_cfg.get('encoder', '')}, {task_cfg.get('loss_weighting', '')})"

    # --- contract test ----------------------------------------------------------------------------
    @classmethod
    def example(cls, workdir: Path, rng: np.random.Generator) -> tuple[dict, list[dict]]:
        from .example import TINY, example_samples

        return {**TINY, "inputs": "cam+lidar"}, example_samples(workdir, rng)
