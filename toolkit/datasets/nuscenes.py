"""Read a nuScenes dataroot through the official nuscenes-devkit: the one module LiDAR and camera code share.

:func:`check_dataroot` and :func:`load_nuscenes` open a dataroot with clear errors; :func:`iter_lidar_frames`
yields LIDAR_TOP keyframes. The devkit resolves scenes, samples, file paths and poses; the point file itself
is read as raw float32 ``x, y, z, intensity, ring`` (:func:`read_pcd_bin`) because
``LidarPointCloud.from_file`` drops the ring column that the exact range-map layout needs. Camera geometry
(calibration, ego poses, projection) built on the same ``NuScenes`` object is in :mod:`toolkit.camera`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np


class DatarootError(FileNotFoundError):
    """A nuScenes dataroot or table version that does not exist or cannot be read."""


@dataclass
class LidarFrame:
    """One LIDAR_TOP keyframe.

    Attributes:
        points: (N, 5) float32 ``x, y, z, intensity, ring`` in the lidar frame, metres (ring = -1 if absent).
        sample_token, sample_data_token, scene_name: nuScenes identifiers.
        timestamp_us: sample_data timestamp, microseconds.
        path: the ``.pcd.bin`` file.
    """

    points: np.ndarray
    sample_token: str
    sample_data_token: str
    scene_name: str
    timestamp_us: int
    path: str


def check_dataroot(dataroot: str | os.PathLike, version: str) -> Path:
    """Validate a dataroot before the devkit sees it (its own errors are bare asserts).

    Raises:
        DatarootError: naming the missing folder and the table versions that do exist.
    """
    root = Path(dataroot)
    if not root.is_dir():
        raise DatarootError(f"nuScenes dataroot '{root}' does not exist or is not a folder")
    if not (root / version).is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "sample.json").exists())
        raise DatarootError(f"nuScenes dataroot '{root}' has no table folder '{version}' "
                            f"(--version); table folders found: {found or 'none'}")
    return root


def load_nuscenes(dataroot: str | os.PathLike, version: str):
    """``NuScenes(version, dataroot)`` after :func:`check_dataroot`, quietly."""
    check_dataroot(dataroot, version)
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version=version, dataroot=str(dataroot), verbose=False)


def read_pcd_bin(path: str | os.PathLike) -> np.ndarray:
    """Read a nuScenes ``.pcd.bin``: (N, 5) float32 ``x, y, z, intensity, ring``.

    Raises:
        ValueError: if the file size is not a multiple of 5 float32 values.
    """
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % 5:
        raise ValueError(f"{path}: {raw.size} float32 values is not a multiple of 5 (x, y, z, intensity, ring)")
    return raw.reshape(-1, 5)


def iter_lidar_frames(nusc, scene_names: list[str] | None = None, channel: str = "LIDAR_TOP") -> Iterator[LidarFrame]:
    """Yield every keyframe of ``channel`` in scene-name order, samples in time order.

    Args:
        nusc: a loaded ``nuscenes.nuscenes.NuScenes``.
        scene_names: restrict to these scenes (all if None).

    Raises:
        KeyError: if a requested scene name is not in the dataroot.
    """
    scenes = sorted(nusc.scene, key=lambda s: s["name"])
    if scene_names is not None:
        known = {s["name"] for s in scenes}
        missing = sorted(set(scene_names) - known)
        if missing:
            raise KeyError(f"scenes not in this dataroot: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        wanted = set(scene_names)
        scenes = [s for s in scenes if s["name"] in wanted]
    for scene in scenes:
        tok = scene["first_sample_token"]
        while tok:
            sample = nusc.get("sample", tok)
            sd_tok = sample["data"].get(channel)
            if sd_tok:
                sd = nusc.get("sample_data", sd_tok)
                path = nusc.get_sample_data_path(sd_tok)
                yield LidarFrame(points=read_pcd_bin(path), sample_token=sample["token"], sample_data_token=sd_tok,
                                 scene_name=scene["name"], timestamp_us=int(sd["timestamp"]), path=path)
            tok = sample["next"]
