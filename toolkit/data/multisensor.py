"""The multi-sensor keyframe sample (six cameras, LiDAR, boxes) as stored in WebDataset shards, and its decode.

One sample per nuScenes keyframe (written by :mod:`shards.nuscenes_multisensor`), key
``<scene>_<sample_token>``. Members (tar extensions), ``S`` = 6 cameras in :data:`CAMERAS` order:

======================= ================== ===================================================================
member                  dtype, shape       content
======================= ================== ===================================================================
``cam_front_left.jpg``  JPEG               one per camera (``<channel lower-case>.jpg``): the original file
 ... ``cam_back_right``                    bytes, or re-encoded after a resize at build time
``intrinsics.npy``      float64 (S, 3, 3)  camera matrices for the *stored* image size, pixels
``cam2ego.npy``         float64 (S, 4, 4)  camera -> ego at the camera's own time (``calibrated_sensor``)
``cam2keyego.npy``      float64 (S, 4, 4)  camera -> keyframe ego frame (ego motion between camera and
                                           LiDAR times folded in; what the decode uses by default)
``lidar2ego.npy``       float64 (4, 4)     LIDAR_TOP -> ego (calibration)
``ego2global.npy``      float64 (4, 4)     keyframe ego pose
``points.npy``          float32 (N, 5|6)   ``x, y, z`` (m, keyframe ego), ``intensity``, ``ring`` (+ ``time_lag``
                                           s with sweeps); points < ``min_range_m`` from their sensor dropped
``boxes.npy``           BOX_DTYPE (M,)     annotations in the keyframe ego frame (:mod:`toolkit.bev.boxes`)
``json``                utf-8 JSON         sample_token, scene_name, timestamp_us, lidar_token, cameras
                                           (order), camera_tokens, camera_timestamps_us, image_sizes
                                           ([W, H] stored), source_image_sizes, jpeg_crc32, point_columns,
                                           sweeps, min_range_m, format
======================= ================== ===================================================================

Decoding (:func:`decode_multisensor`, :class:`MultiSensorDecoder`) checks each JPEG against its CRC-32 (a
flipped bit inside JPEG entropy data would otherwise decode silently to wrong pixels) and raises on any
corrupt member, so the loaders of :mod:`toolkit.data.pipeline` skip and count the sample.
"""

from __future__ import annotations

import io
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolkit.bev.boxes import BOX_DTYPE
from toolkit.bev.grid import BEVGrid
from toolkit.bev.targets import bev_targets
from toolkit.camera.augment import decode_jpeg, plain_resize, random_resize_crop
from toolkit.datasets.nuscenes import CAMERAS, Keyframe
from toolkit.lidar.shard_format import _npy, load_npy

__all__ = ["FORMAT", "CAMERAS", "camera_key", "ARRAY_KEYS", "SHARD_KEYS", "encode_keyframe", "read_sample",
           "MultiSensorConfig", "decode_multisensor", "MultiSensorDecoder"]

FORMAT = "toolkit.data.multisensor/1"
ARRAY_KEYS = ("intrinsics.npy", "cam2ego.npy", "cam2keyego.npy", "lidar2ego.npy", "ego2global.npy", "points.npy",
              "boxes.npy")


def camera_key(channel: str) -> str:
    """Shard member of a camera's image: ``CAM_FRONT`` -> ``cam_front.jpg``."""
    return f"{channel.lower()}.jpg"


#: Every member of a sample (the ``keys`` argument of the loaders).
SHARD_KEYS = (*(camera_key(c) for c in CAMERAS), *ARRAY_KEYS, "json")


def encode_keyframe(kf: Keyframe, image_size: tuple[int, int] | None = None, jpeg_quality: int = 90) -> dict:
    """Shard sample (bytes values) of a :class:`~toolkit.datasets.nuscenes.Keyframe`.

    Args:
        kf: the keyframe (its cameras in the order to store).
        image_size: ``(width, height)`` to resize every image to at build time (intrinsics rescaled, JPEG
            re-encoded at ``jpeg_quality``); None keeps the original file bytes untouched.

    Raises:
        ValueError: a key with a period, a bad size, or an image file that cannot be decoded.
    """
    key = f"{kf.scene_name}_{kf.sample_token}"
    if "." in key:
        raise ValueError(f"sample key '{key}' contains a period; WebDataset would split it")
    from PIL import Image

    sample = {"__key__": key}
    intrinsics, sizes, crcs = [], [], []
    for cam in kf.cameras:
        data = Path(cam.path).read_bytes()
        K = cam.intrinsics
        if image_size is not None:
            t = plain_resize((cam.width, cam.height), image_size)
            buf = io.BytesIO()
            Image.fromarray(decode_jpeg(data, t, name=cam.path)).save(buf, "JPEG", quality=jpeg_quality)
            data, K = buf.getvalue(), t.intrinsics(K)
        sample[camera_key(cam.channel)] = data
        intrinsics.append(K)
        sizes.append(list(image_size) if image_size is not None else [cam.width, cam.height])
        crcs.append(zlib.crc32(data))
    columns = ["x", "y", "z", "intensity", "ring"] + (["time_lag"] if kf.points.shape[1] == 6 else [])
    sample.update({
        "intrinsics.npy": _npy(np.asarray(intrinsics, np.float64)),
        "cam2ego.npy": _npy(np.stack([c.cam2ego for c in kf.cameras])),
        "cam2keyego.npy": _npy(np.stack([c.cam2keyego for c in kf.cameras])),
        "lidar2ego.npy": _npy(kf.lidar2ego),
        "ego2global.npy": _npy(kf.ego2global),
        "points.npy": _npy(kf.points.astype(np.float32)),
        "boxes.npy": _npy(kf.boxes.astype(BOX_DTYPE)),
    })
    meta = {"format": FORMAT, "sample_token": kf.sample_token, "scene_name": kf.scene_name,
            "timestamp_us": kf.timestamp_us, "lidar_token": kf.lidar_token,
            "cameras": [c.channel for c in kf.cameras], "camera_tokens": [c.sample_data_token for c in kf.cameras],
            "camera_timestamps_us": [c.timestamp_us for c in kf.cameras], "image_sizes": sizes,
            "source_image_sizes": [[c.width, c.height] for c in kf.cameras], "jpeg_crc32": crcs,
            "point_columns": columns, "sweeps": kf.sweeps}
    sample["json"] = json.dumps(meta).encode()
    return sample


def read_sample(sample: dict) -> tuple[dict, dict]:
    """Check and unpack a shard sample without decoding images: ``(arrays, meta)``.

    ``arrays`` holds the ``.npy`` members by name without extension (``intrinsics``, ``cam2ego``, ...,
    ``boxes``) and ``jpegs``, the list of image bytes in ``meta["cameras"]`` order, each CRC-checked.

    Raises:
        KeyError: a missing member; ValueError: corrupt JSON, arrays or images (naming the member).
    """
    key = sample.get("__key__", "?")
    if "json" not in sample:
        raise KeyError(f"sample '{key}' has no 'json' member")
    try:
        meta = json.loads(sample["json"])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"sample '{key}': corrupt 'json' ({exc})") from exc
    members = [*ARRAY_KEYS, *(camera_key(c) for c in meta.get("cameras", ()))]
    missing = [k for k in members if k not in sample]
    if missing:
        raise KeyError(f"sample '{key}' lacks {missing}")
    arrays = {k[:-4]: load_npy(sample[k], k) for k in ARRAY_KEYS}
    S = len(meta["cameras"])
    for name, shape in (("intrinsics", (S, 3, 3)), ("cam2ego", (S, 4, 4)), ("cam2keyego", (S, 4, 4))):
        if arrays[name].shape != shape:
            raise ValueError(f"sample '{key}': {name}.npy is {arrays[name].shape}, expected {shape}")
    if arrays["points"].ndim != 2 or arrays["points"].shape[1] != len(meta["point_columns"]):
        raise ValueError(f"sample '{key}': points.npy is {arrays['points'].shape}, columns {meta['point_columns']}")
    if arrays["boxes"].dtype != BOX_DTYPE:
        raise ValueError(f"sample '{key}': boxes.npy has dtype {arrays['boxes'].dtype}, not BOX_DTYPE")
    jpegs = []
    for channel, crc in zip(meta["cameras"], meta["jpeg_crc32"]):
        data = sample[camera_key(channel)]
        if zlib.crc32(data) != crc:
            raise ValueError(f"sample '{key}': {camera_key(channel)} fails its CRC-32 check (corrupt image)")
        jpegs.append(data)
    arrays["jpegs"] = jpegs
    return arrays, meta


@dataclass
class MultiSensorConfig:
    """How a multi-sensor sample is decoded: image size and augmentation, points, BEV targets."""

    #: decoded image height, px (Simple-BEV 224); 0 = as stored (then image_width must be 0 too)
    image_height: int = 224
    #: decoded image width, px (Simple-BEV 400); 0 = as stored
    image_width: int = 400
    #: train-time resize/crop jitter (Simple-BEV, toolkit.camera.augment.random_resize_crop); else a plain resize
    augment: bool = False
    #: the jitter's scale interval [low, high] (Simple-BEV: U(0.8, 1.2))
    scale_range: list[float] = field(default_factory=lambda: [0.8, 1.2])
    #: the jitter's crop offset range, px (null = int(H (1 - 0.8)), Simple-BEV's)
    crop_jitter_px: int | None = None
    #: image resampling: `bilinear` or `nearest` (Simple-BEV; faster, aliased)
    resample: str = "bilinear"
    #: `uint8` (0..255) or `float32` (0..1)
    image_dtype: str = "uint8"
    #: `keyframe` (camera -> keyframe ego, exact, FIERY) or `calibrated` (camera -> ego at the image's time,
    #: Simple-BEV)
    extrinsics: str = "keyframe"
    #: LiDAR points kept (a random subset if more, zero-padded if fewer); 0 = no points; >= 0
    max_points: int = 40000
    #: BEV grid extent along ego x, m [min, max]
    x_bounds: list[float] = field(default_factory=lambda: [-50.0, 50.0])
    #: BEV grid extent along ego y, m [min, max]
    y_bounds: list[float] = field(default_factory=lambda: [-50.0, 50.0])
    #: BEV cell side, m
    resolution: float = 0.5
    #: height interval of the voxel grid, m [min, max]
    z_bounds: list[float] = field(default_factory=lambda: [-5.0, 3.0])
    #: voxel cells along z
    z_cells: int = 8
    #: compute the BEV targets (segmentation, centre, offset)
    targets: bool = True
    #: nuScenes category prefixes that make up the target class
    categories: list[str] = field(default_factory=lambda: ["vehicle."])
    #: Gaussian sigma of the centre heatmap, cells
    sigma_cells: float = 3.0
    #: nuScenes visibility bins whose boxes are zeroed in the valid mask (1 = 0-40 % visible)
    ignore_visibility: list[int] = field(default_factory=lambda: [1])

    def validate(self) -> None:
        """Raises ValueError naming the first bad setting."""
        if self.image_height < 0 or self.image_width < 0 or (self.image_height == 0) != (self.image_width == 0):
            raise ValueError(f"image_height/image_width must both be > 0 (or both 0 = as stored), got "
                             f"{self.image_height} x {self.image_width}")
        if self.image_dtype not in ("uint8", "float32"):
            raise ValueError(f"image_dtype must be 'uint8' or 'float32', got {self.image_dtype!r}")
        if self.extrinsics not in ("keyframe", "calibrated"):
            raise ValueError(f"extrinsics must be 'keyframe' or 'calibrated', got {self.extrinsics!r}")
        if self.resample not in ("bilinear", "nearest"):
            raise ValueError(f"resample must be 'bilinear' or 'nearest', got {self.resample!r}")
        if self.max_points < 0:
            raise ValueError(f"max_points must be >= 0, got {self.max_points}")
        self.grid()

    def grid(self) -> BEVGrid:
        return BEVGrid(tuple(self.x_bounds), tuple(self.y_bounds), self.resolution, tuple(self.z_bounds), self.z_cells)


def decode_multisensor(sample: dict, rng: np.random.Generator, cfg: MultiSensorConfig | None = None) -> dict:
    """Shard sample (bytes) -> numpy arrays for a camera/LiDAR BEV model. Randomness only from ``rng``.

    Returns:
        ``images``: (S, 3, H, W) uint8 (or float32 in [0, 1]); ``intrinsics``: (S, 3, 3) float32 for the
        decoded size (pixels); ``cam2ego``: (S, 4, 4) float32 camera -> keyframe ego (``cfg.extrinsics``);
        ``ego2global``: (4, 4) float64; with ``max_points``: ``points`` (P, 5|6) float32 (keyframe ego, m),
        ``points_mask`` (P,) bool, ``num_points`` int64 (rows of real points, first in ``points``); with
        ``targets``: ``seg``, ``valid``, ``center`` (1, R, C) float32 and ``offset`` (2, R, C) float32 on
        ``cfg.grid()`` (:mod:`toolkit.bev.targets`); ``key``: the sample key (str).

    Raises:
        KeyError, ValueError: a missing or corrupt member (the loaders skip and count the sample).
    """
    cfg = cfg or MultiSensorConfig()
    arrays, meta = read_sample(sample)
    key = sample.get("__key__", "?")
    out_size = (cfg.image_width, cfg.image_height)
    images, intrinsics = [], []
    for i, (data, (w, h)) in enumerate(zip(arrays["jpegs"], meta["image_sizes"])):
        size = out_size if cfg.image_width else (w, h)
        t = (random_resize_crop((w, h), size, rng, tuple(cfg.scale_range), cfg.crop_jitter_px) if cfg.augment
             else plain_resize((w, h), size))
        images.append(decode_jpeg(data, t, cfg.resample, name=f"sample '{key}': {camera_key(meta['cameras'][i])}"))
        intrinsics.append(t.intrinsics(arrays["intrinsics"][i]))
    images = np.stack(images).transpose(0, 3, 1, 2)
    out = {"images": images if cfg.image_dtype == "uint8" else images.astype(np.float32) / 255.0,
           "intrinsics": np.asarray(intrinsics, np.float32),
           "cam2ego": arrays["cam2keyego" if cfg.extrinsics == "keyframe" else "cam2ego"].astype(np.float32),
           "ego2global": arrays["ego2global"], "key": key}
    if cfg.max_points:
        pts = arrays["points"]
        if len(pts) > cfg.max_points:
            pts = pts[np.sort(rng.choice(len(pts), cfg.max_points, replace=False))]
        padded = np.zeros((cfg.max_points, pts.shape[1]), np.float32)
        padded[: len(pts)] = pts
        out.update(points=padded, points_mask=np.arange(cfg.max_points) < len(pts), num_points=np.int64(len(pts)))
    if cfg.targets:
        t = bev_targets(arrays["boxes"], cfg.grid(), tuple(cfg.categories), cfg.sigma_cells,
                        tuple(cfg.ignore_visibility))
        out.update(seg=t["seg"], valid=t["valid"], center=t["center"], offset=t["offset"])
    return out


class MultiSensorDecoder:
    """Picklable ``decode(sample, rng)`` for :func:`toolkit.data.pipeline.train_loader` / ``eval_loader``:
    :func:`decode_multisensor` with a fixed config (validated here: ValueError on a bad setting)."""

    def __init__(self, cfg: MultiSensorConfig | None = None):
        self.cfg = cfg or MultiSensorConfig()
        self.cfg.validate()

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        return decode_multisensor(sample, rng, self.cfg)
