"""Task ``lidar_tokenizer``: post-train a Cosmos CI8x8-style continuous autoencoder on LiDAR range maps.

Data: range-map shards from ``python -m shards nuscenes-lidar`` (:mod:`toolkit.lidar.shard_format`);
only ``range.npy`` is read. Training takes random azimuth crops (``crop_width`` columns, after a
random circular roll); evaluation takes the whole sweep, zero-padded to ``ceil8(map_cols)`` columns.

Loss: L1 between input and reconstruction in normalised units, over valid pixels (``masked_loss``)
or all pixels (Cosmos forces an all-ones mask). Metrics: RMSE, MAE and relative error in metres
over valid pixels, pooled over frames (``shared/notes/lidar-tokenizer.md`` section 4).
Exports, all from the weights the engine exports (EMA by default): ``enc`` (metres -> latent),
``dec`` (latent -> metres), ``ema`` (the whole autoencoder, metres -> metres): Cosmos' ``iter_N.pt``,
``iter_N_enc.jit``, ``iter_N_dec.jit``, ``iter_N_ema.jit`` layout (``iter_N_ae.jit`` before issue 27).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from toolkit.lidar.shard_format import load_npy
from .autoencoder import PRESETS, AutoencoderConfig
from toolkit.tasks.base import EvalOutput, StepOutput, Task

from .metrics import range_error_sums, range_metrics
from .model import RangeAutoencoderExport, RangeCodec, RangeDecoder, RangeEncoder, RangeTokenizer
from .visuals import range_images


@dataclass
class LidarTokenizerConfig:
    """``task:`` section of a ``lidar_tokenizer`` run."""

    #: task name (selects this schema)
    name: str = "lidar_tokenizer"
    #: model size: `tiny` (CPU), `small` or `cosmos` (Cosmos CI8x8 width 128, mult [2, 4, 4], for GPUs)
    preset: str = "tiny"
    #: base width, overriding the preset's (0 = the preset's)
    channels: int = 0
    #: width multiplier per level, overriding the preset's (empty = the preset's)
    channel_mult: list[int] = field(default_factory=list)
    #: ResBlocks per encoder level, overriding the preset's (0 = the preset's)
    num_res_blocks: int = 0
    #: latent channels per 8 x 8 block (Cosmos: 16; 15 keeps a 32 x 1084 map >= 4x compressed); >= 1
    latent_channels: int = 16
    #: valid range interval start, m (clipping and normalisation); > 0 and < max_range_m
    min_range_m: float = 1.0
    #: valid range interval end, m
    max_range_m: float = 100.0
    #: range normalisation: `linear` (Cosmos) or `log`
    normalization: str = "linear"
    #: how invalid (no-return) pixels are filled: `nearest` (row-wise from valid neighbours), `max` or `min`
    fill_invalid: str = "nearest"
    #: 1 (native rows) or 4 (Cosmos' row repeat); map_rows x row_repeat must be a multiple of 8
    row_repeat: int = 1
    #: L1 over valid pixels only
    masked_loss: bool = True
    #: training crop in columns: 0 (whole sweep) or a multiple of 8
    crop_width: int = 256
    #: the sensor's range-map rows (nuScenes HDL-32E: 32)
    map_rows: int = 32
    #: the sensor's range-map columns (nuScenes HDL-32E: 1084); evaluation pads to ceil8(map_cols) and the logged
    #: compression ratio refers to this size
    map_cols: int = 1084

    def validate(self) -> None:
        """Raises ValueError naming the ``task.*`` key at fault."""
        if self.preset not in PRESETS:
            raise ValueError(f"task.preset={self.preset!r} is not one of {sorted(PRESETS)}")
        if self.normalization not in ("linear", "log"):
            raise ValueError(f"task.normalization={self.normalization!r} is not one of ['linear', 'log']")
        if self.fill_invalid not in ("nearest", "max", "min"):
            raise ValueError(f"task.fill_invalid={self.fill_invalid!r} is not one of ['nearest', 'max', 'min']")
        if not 0 < self.min_range_m < self.max_range_m:
            raise ValueError(f"task.min_range_m ({self.min_range_m}) must be > 0 and < task.max_range_m ({self.max_range_m})")
        if self.row_repeat < 1 or (self.map_rows * self.row_repeat) % 8:
            raise ValueError(f"task.map_rows * task.row_repeat must be a positive multiple of 8, "
                             f"got {self.map_rows} x {self.row_repeat}")
        if self.crop_width < 0 or self.crop_width % 8:
            raise ValueError(f"task.crop_width must be 0 or a multiple of 8, got {self.crop_width}")
        if self.latent_channels < 1:
            raise ValueError(f"task.latent_channels must be >= 1, got {self.latent_channels}")

    def autoencoder_config(self) -> AutoencoderConfig:
        preset = dict(PRESETS[self.preset])
        if self.channels:
            preset["channels"] = self.channels
        if self.channel_mult:
            preset["channel_mult"] = list(self.channel_mult)
        if self.num_res_blocks:
            preset["num_res_blocks"] = self.num_res_blocks
        return AutoencoderConfig(in_channels=1, latent_channels=self.latent_channels,
                                 z_channels=max(16, self.latent_channels), **preset)

    def compression(self, rows: int | None = None, cols: int | None = None) -> float:
        """Range-map values / latent values for a ``rows x cols`` map (default: the sensor's)."""
        rows, cols = rows or self.map_rows, cols or self.map_cols
        latent = self.latent_channels * math.ceil(rows * self.row_repeat / 8) * math.ceil(cols / 8)
        return rows * cols / latent


class LidarTokenizerTask(Task):
    """See module docstring."""

    name = "lidar_tokenizer"
    Config = LidarTokenizerConfig
    shard_keys = ("range.npy",)

    def build_model(self) -> RangeTokenizer:
        c = self.cfg
        codec = RangeCodec(c.min_range_m, c.max_range_m, c.normalization, c.fill_invalid, c.row_repeat)
        # channels-last convolutions are ~10% faster on CPU (oneDNN) and on tensor-core GPUs
        return RangeTokenizer(c.autoencoder_config(), codec).to(memory_format=torch.channels_last)

    def blocks(self, model: RangeTokenizer) -> list[nn.Module]:
        """The autoencoder's ResBlocks, down/upsamplers and mid blocks (encoder and decoder)."""
        ae = model.autoencoder
        return [*ae.encoder.blocks, ae.encoder.mid, ae.decoder.mid, *ae.decoder.blocks]

    # --- data -----------------------------------------------------------------------------------
    def _range(self, sample: dict) -> np.ndarray:
        if "range.npy" not in sample:
            raise KeyError(f"no 'range.npy' in sample (keys: {sorted(k for k in sample if not k.startswith('__'))})")
        r = load_npy(sample["range.npy"], "range.npy")
        if r.ndim != 2 or r.shape[0] != self.cfg.map_rows:
            raise ValueError(f"range map of shape {r.shape}, expected ({self.cfg.map_rows}, W) (task.map_rows)")
        return r.astype(np.float32)

    def decode_train(self, sample: dict, rng: np.random.Generator) -> dict:
        r = self._range(sample)
        if self.cfg.crop_width:
            r = np.roll(r, -int(rng.integers(r.shape[1])), axis=1)
            if r.shape[1] < self.cfg.crop_width:
                r = np.pad(r, ((0, 0), (0, self.cfg.crop_width - r.shape[1])))
            r = r[:, : self.cfg.crop_width]
        else:
            r = self._pad_to_eval_width(r)
        return {"range": r[None]}

    def _pad_to_eval_width(self, r: np.ndarray) -> np.ndarray:
        width = 8 * math.ceil(self.cfg.map_cols / 8)
        if r.shape[1] > width:
            raise ValueError(f"range map has {r.shape[1]} columns, more than ceil8(task.map_cols) = {width}")
        return np.pad(r, ((0, 0), (0, width - r.shape[1])))

    def decode_eval(self, sample: dict, rng: np.random.Generator) -> dict:
        return {"range": self._pad_to_eval_width(self._range(sample))[None]}

    # --- training ---------------------------------------------------------------------------------
    def losses(self, model: nn.Module, batch: dict) -> StepOutput:
        out = model(batch["range"])
        err = (out["recon"].float() - out["target"].float()).abs()
        if self.cfg.masked_loss:
            loss = (err * out["valid"]).sum() / out["valid"].sum().clamp(min=1.0)
        else:
            loss = err.mean()
        return StepOutput({"loss": loss})

    # --- evaluation ---------------------------------------------------------------------------------
    def evaluate_batch(self, model: nn.Module, batch: dict) -> EvalOutput:
        r = batch["range"]
        out = model(r)
        pred = model.codec.denormalize(out["recon"].float(), r.shape[-1])
        err = (out["recon"].float() - out["target"].float()).abs()
        sums = range_error_sums(pred, r, model.codec.valid(r))
        sums.update({"l1": (err * out["valid"]).sum().double(), "l1_pixels": out["valid"].sum().double()})
        return EvalOutput(sums=sums)

    def metrics(self, sums: dict[str, float], features: dict[str, torch.Tensor]) -> dict[str, float]:
        return {**range_metrics(sums), "loss": sums.get("l1", 0.0) / max(sums.get("l1_pixels", 0.0), 1.0)}

    def visuals(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        r = batch["range"][:1]
        pred = model.reconstruct(r)
        return range_images(r[0, 0], pred[0, 0], model.codec.valid(r)[0, 0], self.cfg.min_range_m, self.cfg.max_range_m)

    # --- export ---------------------------------------------------------------------------------
    def exports(self, model: nn.Module) -> dict[str, nn.Module]:
        """Cosmos' export layout: ``iter_N_enc.jit`` (range -> latent), ``iter_N_dec.jit`` (latent -> range) and
        ``iter_N_ema.jit``, the whole autoencoder (range -> reconstruction) of the exported weights (the EMA's
        when ``ema.enabled``, as in Cosmos; builds before issue 27 named it ``iter_N_ae.jit``)."""
        return {"enc": RangeEncoder(model), "dec": RangeDecoder(model), "ema": RangeAutoencoderExport(model)}

    def export_inputs(self, batch: dict) -> dict[str, tuple[torch.Tensor, ...]]:
        r = batch["range"]
        c = self.cfg
        shape = (r.shape[0], c.latent_channels, r.shape[2] * c.row_repeat // 8, math.ceil(r.shape[3] / 8))
        latent = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        return {"enc": (r,), "dec": (latent,), "ema": (r,)}

    def info(self, model: nn.Module) -> dict[str, float]:
        return {"compression": self.cfg.compression(),
                "spatial_compression": float(self.cfg.autoencoder_config().spatial_compression)}

    @classmethod
    def example(cls, workdir: Path, rng: np.random.Generator) -> tuple[dict, list[dict]]:
        """An 8-channel tiny model and two random 32 x 96 range maps (30 % no-return pixels)."""
        samples = []
        for i in range(2):
            r = rng.uniform(0.5, 90.0, (32, 96)).astype(np.float32)
            r[rng.random(r.shape) < 0.3] = 0.0
            buf = io.BytesIO()
            np.save(buf, r)
            samples.append({"__key__": f"example{i}", "range.npy": buf.getvalue()})
        return {"channels": 8, "crop_width": 64, "map_cols": 96}, samples
