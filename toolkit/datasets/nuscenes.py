"""Read a nuScenes dataroot through the official nuscenes-devkit: the one module LiDAR and camera code share.

:func:`check_dataroot` and :func:`load_nuscenes` open a dataroot with clear errors; :func:`iter_lidar_frames`
yields LIDAR_TOP keyframes; :func:`read_keyframe` / :func:`iter_keyframes` yield whole keyframes (six cameras,
LiDAR sweeps and boxes, all in the keyframe ego frame); :func:`official_split_scenes` names the scenes of
an official split. The devkit resolves scenes, samples, file paths and poses; the point file itself
is read as raw float32 ``x, y, z, intensity, ring`` (:func:`read_pcd_bin`) because
``LidarPointCloud.from_file`` drops the ring column that the exact range-map layout needs. Camera geometry
(calibration, ego poses, projection) built on the same ``NuScenes`` object is in :mod:`toolkit.camera`.

The *keyframe ego frame* is the ego pose at the LIDAR_TOP keyframe's timestamp (the sample's time). Cameras
fire at their own times (up to ~45 ms from the LiDAR's); each has its own ``ego_pose`` row. A
:class:`CameraView` carries both the calibrated ``cam2ego`` (camera -> ego at the camera's time; what
Simple-BEV uses, ignoring the ego motion) and ``cam2keyego`` (camera -> global at the camera's time ->
keyframe ego; FIERY's choice, exact: ``T_keyego_from_global @ T_global_from_ego(t_cam) @ cam2ego``). At 9 m/s
the two differ by up to ~0.4 m, tens of pixels for near objects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from toolkit.bev.boxes import BOX_DTYPE
from toolkit.camera.geometry import invert_rigid, transform_matrix, transform_points

#: The six nuScenes cameras in the layout of a 2 x 3 picture (front row left to right, then the back row),
#: Simple-BEV's order: the order of the images in multi-sensor shards.
CAMERAS = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")


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


def iter_samples(nusc, scene_names: list[str] | None = None) -> Iterator[tuple[dict, dict]]:
    """Yield ``(scene, sample)`` table rows in scene-name order, samples in time order.

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
            yield scene, sample
            tok = sample["next"]


def iter_lidar_frames(nusc, scene_names: list[str] | None = None, channel: str = "LIDAR_TOP") -> Iterator[LidarFrame]:
    """Yield every keyframe of ``channel`` in scene-name order, samples in time order.

    Args:
        nusc: a loaded ``nuscenes.nuscenes.NuScenes``.
        scene_names: restrict to these scenes (all if None).

    Raises:
        KeyError: if a requested scene name is not in the dataroot.
    """
    for scene, sample in iter_samples(nusc, scene_names):
        sd_tok = sample["data"].get(channel)
        if sd_tok:
            sd = nusc.get("sample_data", sd_tok)
            path = nusc.get_sample_data_path(sd_tok)
            yield LidarFrame(points=read_pcd_bin(path), sample_token=sample["token"], sample_data_token=sd_tok,
                             scene_name=scene["name"], timestamp_us=int(sd["timestamp"]), path=path)


def official_split_scenes(split: str) -> list[str]:
    """Scene names of an official nuScenes split (``train``, ``val``, ``test``, ``mini_train``, ``mini_val``, ...;
    nuscenes-devkit's ``create_splits_scenes``).

    Raises:
        KeyError: an unknown split name (the message lists the known ones).
    """
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes(verbose=False)
    if split not in splits:
        raise KeyError(f"unknown --split '{split}'; choose from {sorted(splits)}")
    return list(splits[split])


@dataclass
class CameraView:
    """One camera image of a keyframe and its geometry (see the module docstring for the two extrinsics).

    Attributes:
        channel: e.g. ``CAM_FRONT``; path: the image file; sample_data_token: its token.
        timestamp_us: the camera's capture time, microseconds.
        width, height: image size, pixels.
        intrinsics: (3, 3) float64 camera matrix, pixels (``calibrated_sensor.camera_intrinsic``).
        cam2ego: (4, 4) float64 camera -> ego at the camera's time (``calibrated_sensor``).
        cam2keyego: (4, 4) float64 camera -> keyframe ego frame (the ego motion folded in).
    """

    channel: str
    path: str
    sample_data_token: str
    timestamp_us: int
    width: int
    height: int
    intrinsics: np.ndarray
    cam2ego: np.ndarray
    cam2keyego: np.ndarray


@dataclass
class Keyframe:
    """One nuScenes sample with its cameras, LiDAR points and boxes, all in the keyframe ego frame.

    Attributes:
        sample_token, scene_name: identifiers; timestamp_us: the sample's (LIDAR_TOP's) time, microseconds.
        lidar_token: the LIDAR_TOP ``sample_data`` token.
        cameras: one :class:`CameraView` per requested camera, in the requested order.
        points: (N, 5) float32 ``x, y, z, intensity, ring`` in the keyframe ego frame (m), or (N, 6) with a
            last column ``time_lag`` (s, keyframe time - sweep time, >= 0) when sweeps were requested.
        sweeps: previous sweeps found and included (fewer than requested at the start of a scene).
        lidar2ego: (4, 4) float64 LIDAR_TOP -> ego (calibration); ego2global: (4, 4) float64 keyframe ego pose.
        boxes: :data:`toolkit.bev.boxes.BOX_DTYPE` array of the sample's annotations in the keyframe ego frame.
    """

    sample_token: str
    scene_name: str
    timestamp_us: int
    lidar_token: str
    cameras: list[CameraView]
    points: np.ndarray
    sweeps: int
    lidar2ego: np.ndarray
    ego2global: np.ndarray
    boxes: np.ndarray


def _pose(nusc, table: str, token: str) -> np.ndarray:
    rec = nusc.get(table, token)
    return transform_matrix(rec["translation"], rec["rotation"])


def _sweep_points(nusc, sd: dict, keyego_from_global: np.ndarray, min_range_m: float) -> np.ndarray:
    """One LiDAR sweep's (N, 5) points in the keyframe ego frame, those nearer than ``min_range_m`` to the
    sensor dropped (ego roof, no-return points)."""
    pts = read_pcd_bin(nusc.get_sample_data_path(sd["token"]))
    pts = pts[np.linalg.norm(pts[:, :3], axis=1) >= min_range_m]
    T = keyego_from_global @ _pose(nusc, "ego_pose", sd["ego_pose_token"]) @ _pose(
        nusc, "calibrated_sensor", sd["calibrated_sensor_token"])
    out = pts.copy()
    out[:, :3] = transform_points(T, pts[:, :3]).astype(np.float32)
    return out


def _visibility_bin(token: str) -> int:
    return int(token) if token in ("1", "2", "3", "4") else 0


def keyframe_boxes(nusc, sample: dict, keyego_from_global: np.ndarray) -> np.ndarray:
    """The sample's annotations as a :data:`~toolkit.bev.boxes.BOX_DTYPE` array in the keyframe ego frame.

    Centre and orientation are the devkit's ``get_box`` moved by ``keyego_from_global`` (what
    ``get_sample_data(lidar_token)`` does before its sensor step); velocity is ``box_velocity`` (global, m/s)
    rotated into the ego frame, 0 with ``velocity_valid = False`` where the devkit gives NaN.
    """
    from pyquaternion import Quaternion

    R = keyego_from_global[:3, :3]
    q_ego = Quaternion(matrix=R, atol=1e-6)
    out = np.zeros(len(sample["anns"]), BOX_DTYPE)
    for i, ann_token in enumerate(sample["anns"]):
        ann = nusc.get("sample_annotation", ann_token)
        rot = q_ego * Quaternion(ann["rotation"])
        m = rot.rotation_matrix
        vel = R @ nusc.box_velocity(ann_token)
        ok = bool(np.all(np.isfinite(vel)))
        out[i] = (transform_points(keyego_from_global, np.array([ann["translation"]]))[0], ann["size"],
                  np.arctan2(m[1, 0], m[0, 0]), rot.elements, vel if ok else np.zeros(3), ok,
                  _visibility_bin(ann["visibility_token"]), ann["num_lidar_pts"], ann["category_name"],
                  ann["instance_token"], ann_token)
    return out


def read_keyframe(nusc, sample_token: str, cameras=CAMERAS, sweeps: int = 0, min_range_m: float = 1.0,
                  lidar: str = "LIDAR_TOP") -> Keyframe:
    """Read one keyframe: camera views, LiDAR points (optionally with previous sweeps) and boxes.

    Args:
        nusc: a loaded ``NuScenes``.
        sample_token: the sample (keyframe) token.
        cameras: camera channels, in the order wanted.
        sweeps: previous LiDAR sweeps (``sample_data.prev``, 20 Hz) to add to the keyframe's; each is moved
            lidar -> ego(t_sweep) -> global -> keyframe ego, and all points get a ``time_lag`` column (s).
            With 0 the points have 5 columns.
        min_range_m: points nearer than this to their sweep's sensor origin are dropped (3D distance, m;
            0 keeps all). nuScenes' no-return points (~(0, 0, 0) before motion compensation) and the ego
            roof fall below 1 m.
        lidar: the point-sensor channel.

    Returns:
        A :class:`Keyframe`.

    Raises:
        KeyError: an unknown sample token, or a channel the sample lacks (the message lists its channels).
        ValueError: a negative ``sweeps`` or ``min_range_m``, or a "camera" that is not a camera.
    """
    if sweeps < 0 or min_range_m < 0:
        raise ValueError(f"sweeps and min_range_m must be >= 0, got {sweeps} and {min_range_m}")
    sample = nusc.get("sample", sample_token)
    for channel in (lidar, *cameras):
        if channel not in sample["data"]:
            raise KeyError(f"sample {sample_token} has no '{channel}' data; channels: {sorted(sample['data'])}")
    lidar_sd = nusc.get("sample_data", sample["data"][lidar])
    ego2global = _pose(nusc, "ego_pose", lidar_sd["ego_pose_token"])
    keyego_from_global = invert_rigid(ego2global)

    views = []
    for channel in cameras:
        sd = nusc.get("sample_data", sample["data"][channel])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        modality = nusc.get("sensor", cs["sensor_token"])["modality"]
        if modality != "camera":
            raise ValueError(f"'{channel}' is a {modality} channel, not a camera")
        cam2ego = transform_matrix(cs["translation"], cs["rotation"])
        cam2keyego = keyego_from_global @ _pose(nusc, "ego_pose", sd["ego_pose_token"]) @ cam2ego
        views.append(CameraView(channel=channel, path=nusc.get_sample_data_path(sd["token"]),
                                sample_data_token=sd["token"], timestamp_us=int(sd["timestamp"]),
                                width=int(sd["width"]), height=int(sd["height"]),
                                intrinsics=np.asarray(cs["camera_intrinsic"], np.float64), cam2ego=cam2ego,
                                cam2keyego=cam2keyego))

    clouds, sd, found = [], lidar_sd, 0
    while True:
        pts = _sweep_points(nusc, sd, keyego_from_global, min_range_m)
        if sweeps:
            lag = np.full((len(pts), 1), (lidar_sd["timestamp"] - sd["timestamp"]) * 1e-6, np.float32)
            pts = np.concatenate([pts, lag], axis=1)
        clouds.append(pts)
        if found == sweeps or not sd["prev"]:
            break
        sd, found = nusc.get("sample_data", sd["prev"]), found + 1

    scene = nusc.get("scene", sample["scene_token"])
    return Keyframe(sample_token=sample["token"], scene_name=scene["name"], timestamp_us=int(sample["timestamp"]),
                    lidar_token=lidar_sd["token"], cameras=views, points=np.concatenate(clouds), sweeps=found,
                    lidar2ego=_pose(nusc, "calibrated_sensor", lidar_sd["calibrated_sensor_token"]),
                    ego2global=ego2global, boxes=keyframe_boxes(nusc, sample, keyego_from_global))


def iter_keyframes(nusc, scene_names: list[str] | None = None, **kwargs) -> Iterator[Keyframe]:
    """:func:`read_keyframe` of every sample of ``scene_names`` (all if None), scenes by name, samples in
    time order; ``kwargs`` go to :func:`read_keyframe`.

    Raises:
        KeyError: a scene name not in the dataroot, or a sample that lacks a requested channel.
    """
    for _, sample in iter_samples(nusc, scene_names):
        yield read_keyframe(nusc, sample["token"], **kwargs)
