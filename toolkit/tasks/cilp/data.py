"""Decoding of CILP shard samples (:mod:`shards.cilp`) into network inputs.

* RGB: the RGBA PNG as (4, 64, 64) float32 in [0, 1] (resized to 64 x 64 if needed, like the DLI's
  ``Resize(64)``), no normalisation.
* LiDAR: the (64, 64) range image (rows azimuth, columns zenith, metres, a miss = ``max_range_m``):
  ``depth`` gives (1, 64, 64) = range / range_scale_m (misses at max_range / scale); ``xyza`` gives
  (4, 64, 64) = (x, y, z) / range_scale_m and the hit mask ``a = range < max_range_m``, with
  x = d sin(-az) cos(-ze), y = d cos(-az) cos(-ze), z = d sin(-ze) and xyz = 0 on misses (the DLI's XYZA).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from toolkit.lidar.shard_format import load_npy


@dataclass
class CILPDataConfig:
    """Input settings shared by the CILP and fusion tasks (``task.*`` keys)."""

    #: LiDAR input encoding: `depth` (1 channel, range / range_scale_m) or `xyza` (x, y, z / range_scale_m and a hit
    #: mask)
    lidar_input: str = "depth"
    #: ranges are clipped here; farther returns count as no hit, m; > 0
    max_range_m: float = 50.0
    #: divisor of ranges and coordinates, m; > 0
    range_scale_m: float = 10.0
    #: 4 positive widths of the convolution trunks (64 -> 4 pixels)
    channels: list[int] = field(default_factory=lambda: [50, 100, 200, 200])
    #: classes of the classifier heads (the synthetic set: cubes, spheres)
    num_classes: int = 2
    #: normalisation in the trunks: `none`, `batch` or `group`
    norm: str = "none"

    def validate(self) -> None:
        if self.lidar_input not in ("xyza", "depth"):
            raise ValueError(f"task.lidar_input={self.lidar_input!r} is not one of ['xyza', 'depth']")
        if len(self.channels) != 4 or min(self.channels) < 1:
            raise ValueError(f"task.channels must be 4 positive widths (64 -> 4 pixels), got {list(self.channels)}")
        if self.norm not in ("none", "batch", "group"):
            raise ValueError(f"task.norm={self.norm!r} is not one of ['none', 'batch', 'group']")
        if self.max_range_m <= 0 or self.range_scale_m <= 0:
            raise ValueError("task.max_range_m and task.range_scale_m must be > 0")

    @property
    def lidar_channels(self) -> int:
        return 4 if self.lidar_input == "xyza" else 1


def decode_rgb(data: bytes, size: int = 64) -> np.ndarray:
    """PNG bytes -> (4, size, size) float32 RGBA in [0, 1]."""
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGBA")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return (np.asarray(img, dtype=np.float32) / 255.0).transpose(2, 0, 1).copy()


def lidar_input(range_image: np.ndarray, azimuth: np.ndarray, zenith: np.ndarray, cfg: CILPDataConfig) -> np.ndarray:
    """(64, 64) range image -> network input, see module docstring.

    Raises:
        ValueError: if the shapes of the image and the beam angles disagree.
    """
    r = np.asarray(range_image, np.float32)
    if r.ndim != 2 or r.shape != (len(azimuth), len(zenith)):
        raise ValueError(f"range image {r.shape} does not match {len(azimuth)} azimuths x {len(zenith)} zeniths")
    hit = r < cfg.max_range_m
    d = np.minimum(r, cfg.max_range_m)
    if cfg.lidar_input == "depth":
        return (d / cfg.range_scale_m)[None].astype(np.float32)
    az, ze = np.asarray(azimuth, np.float32)[:, None], np.asarray(zenith, np.float32)[None, :]
    xyz = np.stack([d * np.sin(-az) * np.cos(-ze), d * np.cos(-az) * np.cos(-ze), d * np.sin(-ze)])
    xyz = np.where(hit[None], xyz, 0.0) / cfg.range_scale_m
    return np.concatenate([xyz, hit[None].astype(np.float32)]).astype(np.float32)


def decode_pair(sample: dict, cfg: CILPDataConfig, need_lidar: bool = True) -> dict:
    """Shard sample -> ``{"rgb", "lidar" (if needed), "label"}``.

    Raises:
        KeyError: a missing member; ValueError: undecodable data.
    """
    out = {"rgb": decode_rgb(sample["rgb.png"]), "label": np.int64(int(sample["cls"]))}
    if need_lidar:
        out["lidar"] = lidar_input(load_npy(sample["lidar.npy"], "lidar.npy"), load_npy(sample["azimuth.npy"]),
                                   load_npy(sample["zenith.npy"]), cfg)
    return out


SHARD_KEYS = ("rgb.png", "lidar.npy", "azimuth.npy", "zenith.npy", "cls")
CLASS_NAMES = ("cube", "sphere")  #: label 0 and 1 (the layout's ``cubes`` and ``spheres`` folders)
