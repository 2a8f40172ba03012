"""Pinhole camera geometry in float64: rigid transforms, projection to pixels, the image mask, and the
nuScenes LiDAR -> camera chain.

Frames and conventions are those of :mod:`toolkit.camera` (camera x right, y down, z forward; ego x
forward, y left, z up; ``T_a_from_b`` maps frame ``b`` points into frame ``a``; quaternions ``w, x, y, z``).
A typical use, LIDAR_TOP points into a camera image::

    T = lidar_to_camera(nusc, sample_token, "CAM_FRONT")
    uv, depth = project_to_image(transform_points(T, points[:, :3]), K)
    keep = in_image(uv, depth, width, height)

This reproduces nuscenes-devkit's ``NuScenesExplorer.map_pointcloud_to_image`` (which rounds to float32
after each step; here everything stays float64).
"""

from __future__ import annotations

import numpy as np
from pyquaternion import Quaternion

#: Pixel convention of image resizing and sampling (:mod:`toolkit.camera.augment`, :mod:`toolkit.camera.voxels`):
#: the centre of pixel (row i, column j) is at ``(u, v) = (j, i)`` (OpenCV's convention, so the image spans
#: ``[-0.5, W - 0.5]``). Continuous image coordinates, in which pixel ``j`` covers ``[j, j + 1)`` (how Pillow,
#: OpenCV and ``grid_sample(align_corners=False)`` resample), are ``u + PIXEL_EDGE_OFFSET``. Set it to 0.0 for
#: data whose intrinsics put pixel centres at ``j + 0.5`` (e.g. a ray caster shooting through ``j + 0.5``).
PIXEL_EDGE_OFFSET = 0.5

__all__ = ["PIXEL_EDGE_OFFSET", "transform_matrix", "invert_rigid", "transform_points", "project_to_image",
           "project_ego_points", "in_image", "lidar_to_camera"]


def _array(x, shape: tuple, name: str) -> np.ndarray:
    """``x`` as a float64 array of ``shape`` (-1 = any length), or ValueError naming ``name``."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != len(shape) or any(s != -1 and s != n for s, n in zip(shape, a.shape)):
        want = "(" + ", ".join("N" if s == -1 else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {a.shape}")
    return a


def transform_matrix(translation, rotation_wxyz, inverse: bool = False) -> np.ndarray:
    """The rigid transform of a pose: sensor -> ego or ego -> global, as the nuScenes tables store it.

    A ``calibrated_sensor`` or ``ego_pose`` row gives the pose of frame ``b`` (sensor, ego) in frame ``a``
    (ego, global): ``translation`` is ``b``'s origin in ``a`` and ``rotation_wxyz`` rotates ``b``'s axes
    into ``a``'s. The result maps ``b`` points into ``a``: ``p_a = R p_b + t``.

    Args:
        translation: (3,) metres.
        rotation_wxyz: (4,) unit quaternion ``w, x, y, z`` (normalised here, as pyquaternion does).
        inverse: return ``T_b_from_a`` instead, ``[[R^T, -R^T t], [0, 1]]`` (exact, no matrix inversion).

    Returns:
        (4, 4) float64 homogeneous matrix, last row ``0, 0, 0, 1``.

    Raises:
        ValueError: on a wrong shape, or a zero quaternion.
    """
    t = _array(translation, (3,), "translation")
    q = _array(rotation_wxyz, (4,), "rotation_wxyz")
    if not np.any(q):
        raise ValueError("rotation_wxyz is the zero quaternion")
    rot = Quaternion(q).rotation_matrix
    out = np.eye(4)
    if inverse:
        out[:3, :3] = rot.T
        out[:3, 3] = -rot.T @ t
    else:
        out[:3, :3] = rot
        out[:3, 3] = t
    return out


def invert_rigid(T) -> np.ndarray:
    """Exact inverse of rigid transforms: ``[[R^T, -R^T t], [0, 1]]`` (no matrix inversion).

    Args:
        T: (..., 4, 4) rigid ``T_a_from_b`` (rotation and translation; the last row is not used).

    Returns:
        (..., 4, 4) float64 ``T_b_from_a``.

    Raises:
        ValueError: if the last two axes are not (4, 4).
    """
    T = np.asarray(T, np.float64)
    if T.shape[-2:] != (4, 4):
        raise ValueError(f"T must have shape (..., 4, 4), got {T.shape}")
    rt = np.swapaxes(T[..., :3, :3], -1, -2)
    out = np.zeros_like(T)
    out[..., :3, :3] = rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", rt, T[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def transform_points(T, points) -> np.ndarray:
    """Apply a rigid (or any affine) transform to points: ``p' = T[:3, :3] p + T[:3, 3]``.

    Args:
        T: (4, 4) ``T_a_from_b`` (the last row is not used).
        points: (N, 3) points in frame ``b``, metres (any float dtype; extra columns such as intensity
            must be sliced off first).

    Returns:
        (N, 3) float64 points in frame ``a``, metres.

    Raises:
        ValueError: on a wrong shape.
    """
    T = _array(T, (4, 4), "T")
    p = _array(points, (-1, 3), "points")
    return p @ T[:3, :3].T + T[:3, 3]


def project_to_image(points_cam, intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole projection of camera-frame points to pixels.

    ``(u, v, 1) * z = K (x, y, z)``: ``u`` is the column and ``v`` the row, in pixels, with the principal
    point and focal lengths of ``K``. No distortion (nuScenes images are undistorted).

    Args:
        points_cam: (N, 3) points in the camera frame (x right, y down, z forward), metres.
        intrinsics: (3, 3) camera matrix ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]``, pixels (the nuScenes
            ``calibrated_sensor.camera_intrinsic``).

    Returns:
        ``uv``: (N, 2) float64 pixel coordinates ``(u, v)``; ``depth``: (N,) float64 z in metres. Points with
        depth <= 0 (behind or in the plane of the camera) get meaningless ``uv`` (mirrored, or inf/nan at
        0): mask them out with :func:`in_image`.

    Raises:
        ValueError: on a wrong shape.
    """
    p = _array(points_cam, (-1, 3), "points_cam")
    K = _array(intrinsics, (3, 3), "intrinsics")
    uvw = p @ K.T
    depth = p[:, 2].copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = uvw[:, :2] / uvw[:, 2:3]
    return uv, depth


def project_ego_points(points_ego, intrinsics, cam2ego) -> tuple[np.ndarray, np.ndarray]:
    """Ego-frame points -> pixels of one camera: ``project_to_image(inverse(cam2ego) p, K)``.

    Args:
        points_ego: (N, 3) points in the ego frame the transform refers to, metres.
        intrinsics: (3, 3) camera matrix, pixels (of the image size the pixels are wanted in).
        cam2ego: (4, 4) rigid ``T_ego_from_camera`` (e.g. the shards' ``cam2keyego``: camera -> keyframe ego).

    Returns:
        ``uv`` (N, 2) float64 pixels and ``depth`` (N,) float64 metres, as :func:`project_to_image` (mask
        with :func:`in_image`). The torch version for batches is :func:`toolkit.camera.voxels.project_points`.

    Raises:
        ValueError: on a wrong shape.
    """
    T = _array(cam2ego, (4, 4), "cam2ego")
    return project_to_image(transform_points(invert_rigid(T), points_ego), intrinsics)


def in_image(uv, depth, width: int, height: int, min_depth: float = 0.1, *, margin: float = 0.0) -> np.ndarray:
    """Which projected points land in the image and in front of the camera.

    A point is kept when ``depth > min_depth`` and ``margin < u < width - margin`` and
    ``margin < v < height - margin`` (pixel ``(0, 0)`` is the image's top-left corner). With
    ``min_depth=1.0, margin=1`` this is exactly the mask of the devkit's ``map_pointcloud_to_image``.

    Args:
        uv: (N, 2) pixel coordinates from :func:`project_to_image`.
        depth: (N,) camera-frame z, metres.
        width, height: image size, pixels.
        min_depth: nearest depth kept, metres (also drops points behind the camera).
        margin: border left out on every side, pixels.

    Returns:
        (N,) bool mask.

    Raises:
        ValueError: on a wrong shape, mismatched lengths or a non-positive image size.
    """
    uv = _array(uv, (-1, 2), "uv")
    depth = _array(depth, (-1,), "depth")
    if len(uv) != len(depth):
        raise ValueError(f"uv has {len(uv)} points but depth has {len(depth)}")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    u, v = uv[:, 0], uv[:, 1]
    return ((depth > min_depth) & (u > margin) & (u < width - margin) & (v > margin) & (v < height - margin))


def lidar_to_camera(nusc, sample_token: str, camera: str, lidar: str = "LIDAR_TOP") -> np.ndarray:
    """``T_camera_from_lidar`` of one nuScenes sample, through the devkit's tables.

    Chains lidar -> ego(t_lidar) -> global -> ego(t_cam) -> camera: the LiDAR's calibration, the ego pose
    at the LiDAR's capture time, the ego pose at the camera's own capture time (each ``sample_data`` has
    its own ``ego_pose``; the cameras fire tens of milliseconds apart while the ego moves) and the camera's
    calibration. This is the chain of the devkit's ``map_pointcloud_to_image``.

    Args:
        nusc: a loaded ``nuscenes.nuscenes.NuScenes`` (see :func:`toolkit.datasets.nuscenes.load_nuscenes`).
        sample_token: the ``sample`` (keyframe) token.
        camera: camera channel, e.g. ``CAM_FRONT``.
        lidar: point-sensor channel (default ``LIDAR_TOP``).

    Returns:
        (4, 4) float64 matrix mapping lidar-frame points (metres) into the camera frame (x right, y down,
        z forward, metres) at the camera's capture time.

    Raises:
        KeyError: an unknown sample token, or a channel this sample has no data for (the message lists
            the channels it has).
        ValueError: ``camera`` is not a camera channel.
    """
    sample = nusc.get("sample", sample_token)
    for channel in (lidar, camera):
        if channel not in sample["data"]:
            raise KeyError(f"sample {sample_token} has no '{channel}' data; channels: {sorted(sample['data'])}")
    cam_sd = nusc.get("sample_data", sample["data"][camera])
    lidar_sd = nusc.get("sample_data", sample["data"][lidar])
    cam_cs = nusc.get("calibrated_sensor", cam_sd["calibrated_sensor_token"])
    modality = nusc.get("sensor", cam_cs["sensor_token"])["modality"]
    if modality != "camera":
        raise ValueError(f"'{camera}' is a {modality} channel, not a camera")

    def pose(table: str, token: str, inverse: bool) -> np.ndarray:
        rec = nusc.get(table, token)
        return transform_matrix(rec["translation"], rec["rotation"], inverse=inverse)

    ego_from_lidar = pose("calibrated_sensor", lidar_sd["calibrated_sensor_token"], False)
    global_from_ego_lidar = pose("ego_pose", lidar_sd["ego_pose_token"], False)
    ego_cam_from_global = pose("ego_pose", cam_sd["ego_pose_token"], True)
    cam_from_ego = transform_matrix(cam_cs["translation"], cam_cs["rotation"], inverse=True)
    return cam_from_ego @ ego_cam_from_global @ global_from_ego_lidar @ ego_from_lidar
