"""Tiny multi-sensor samples for the contract test: six small cameras around a box-shaped car, real JPEGs,
LiDAR points on the ground and the car, encoded exactly as the shard builder writes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit.bev.boxes import make_boxes
from toolkit.data.multisensor import encode_keyframe
from toolkit.datasets.nuscenes import CAMERAS, CameraView, Keyframe

#: task overrides of the example: 32 x 64 images, a 16 x 16 m grid of 1 m cells, 4 z levels.
TINY = {"encoder": "tiny", "encoder_base": 8, "feat_channels": 8, "merge_channels": 16, "decoder_width": 8,
        "sample.image_height": 32, "sample.image_width": 64, "sample.max_points": 256,
        "sample.x_bounds": [-8.0, 8.0], "sample.y_bounds": [-8.0, 8.0], "sample.resolution": 1.0,
        "sample.z_bounds": [-1.0, 3.0], "sample.z_cells": 4, "sample.sigma_cells": 1.0}

_YAW_DEG = {"CAM_FRONT_LEFT": 55, "CAM_FRONT": 0, "CAM_FRONT_RIGHT": -55, "CAM_BACK_LEFT": 110, "CAM_BACK": 180,
            "CAM_BACK_RIGHT": -110}


def camera_to_ego(yaw_rad: float, height_m: float = 1.5) -> np.ndarray:
    """(4, 4) camera -> ego of a level camera looking along ego yaw ``yaw_rad`` (camera x right, y down, z forward)."""
    fwd = np.array([np.cos(yaw_rad), np.sin(yaw_rad), 0.0])
    right = np.array([np.sin(yaw_rad), -np.cos(yaw_rad), 0.0])
    T = np.eye(4)
    T[:3, :3] = np.stack([right, [0.0, 0.0, -1.0], fwd], axis=1)
    T[:3, 3] = (1.0, 0.0, height_m)
    return T


def example_samples(workdir: Path, rng: np.random.Generator, n: int = 3, size=(80, 45)) -> list[dict]:
    """``n`` raw shard samples (dict of bytes) with random images, one car box each and ground points."""
    from PIL import Image

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    w, h = size
    K = np.array([[w / 2 / np.tan(np.radians(35)), 0, w / 2], [0, w / 2 / np.tan(np.radians(35)), h / 2], [0, 0, 1]])
    samples = []
    for i in range(n):
        views = []
        for ch in CAMERAS:
            path = workdir / f"bev_example_{i}_{ch}.jpg"
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, "JPEG", quality=90)
            T = camera_to_ego(np.radians(_YAW_DEG[ch]))
            views.append(CameraView(ch, str(path), f"tok{i}{ch}", 1000 * i, w, h, K, T, T))
        centre = np.array([rng.uniform(-4, 4), rng.uniform(-4, 4), 0.8])
        boxes = make_boxes([centre], [[1.8, 4.2, 1.6]], [rng.uniform(-np.pi, np.pi)], visibility=[4 - i % 4],
                           category=["vehicle.car"], instance_token=[f"inst{i}"], token=[f"ann{i}"])
        ground = np.c_[rng.uniform(-8, 8, (150, 2)), np.zeros(150)]
        car = centre + rng.uniform(-0.8, 0.8, (50, 3))
        xyz = np.r_[ground, car]
        points = np.c_[xyz, rng.uniform(0, 100, len(xyz)), rng.integers(0, 32, len(xyz))].astype(np.float32)
        kf = Keyframe(f"sample{i:04d}", "scene-example", 1000 * i, f"lidar{i}", views, points, 0, np.eye(4), np.eye(4),
                      boxes)
        samples.append(encode_keyframe(kf))
    return samples
