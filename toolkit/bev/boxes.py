"""3D boxes in the keyframe ego frame: the one structured array that readers, shards, targets and pictures share.

A box set is a numpy structured array of :data:`BOX_DTYPE`, one row per annotation, in the ego frame of the
LIDAR_TOP keyframe (x forward, y left, z up, metres; see :mod:`toolkit.camera`). It round-trips through
``.npy`` without pickles (fixed-width strings), so the shard member ``boxes.npy`` is this array as is.

============== =========== ===========================================================================
field          dtype       content
============== =========== ===========================================================================
center         f8 (3,)     box centre (the nuScenes ``Box.center``: the middle of the box), m
size           f8 (3,)     ``w, l, h`` (width along the box's y, length along its x, height), m
yaw            f8          heading of the box's x axis in the ego x-y plane, ``atan2(R10, R00)``, rad
rotation       f8 (4,)     full orientation in the ego frame, quaternion ``w, x, y, z`` (nuScenes boxes
                           rotate about global z only; in the ego frame they carry the ego's ~1 deg
                           pitch/roll, which moves projected corners by pixels: use it for 3D corners)
velocity       f8 (3,)     m/s in the ego frame (devkit ``box_velocity``, rotated); 0 where unknown
velocity_valid ?           False where the devkit returned NaN (single annotation, large time gap)
visibility     i1          nuScenes visibility bin 1..4 (0-40, 40-60, 60-80, 80-100 % visible); 0 unknown
num_lidar_pts  i4          LiDAR points inside the box (the annotation's count)
category       U40         e.g. ``vehicle.car``
instance_token U32         the object's track across samples
token          U32         the ``sample_annotation`` token
============== =========== ===========================================================================

Corners follow nuscenes-devkit's ``Box.corners``: the first four are the front face (+x half of the box),
the last four the rear face; ``0, 1, 5, 4`` are the top corners and ``2, 3, 7, 6`` the bottom ones.
"""

from __future__ import annotations

import numpy as np
from pyquaternion import Quaternion

__all__ = ["BOX_DTYPE", "make_boxes", "box_rotation_matrices", "box_corners", "box_footprints"]

BOX_DTYPE = np.dtype([
    ("center", "<f8", (3,)), ("size", "<f8", (3,)), ("yaw", "<f8"), ("rotation", "<f8", (4,)),
    ("velocity", "<f8", (3,)), ("velocity_valid", "?"), ("visibility", "i1"), ("num_lidar_pts", "<i4"),
    ("category", "<U40"), ("instance_token", "<U32"), ("token", "<U32"),
])


def make_boxes(center, size, yaw=None, rotation=None, **fields) -> np.ndarray:
    """A :data:`BOX_DTYPE` array from columns (tests, synthetic examples, conversions).

    Args:
        center: (M, 3) m; size: (M, 3) ``w, l, h`` m.
        yaw: (M,) rad, a rotation about ego z (used when ``rotation`` is None).
        rotation: (M, 4) quaternions ``w, x, y, z``; ``yaw`` is then derived from it.
        **fields: any other :data:`BOX_DTYPE` field as an (M,) sequence (``category``, ``visibility``, ...);
            defaults: velocity 0 (valid), visibility 4, num_lidar_pts 0, category ``vehicle.car``, tokens ``""``.

    Raises:
        ValueError: on mismatched lengths, a wrong column shape, non-positive sizes or an unknown field.
    """
    center = np.asarray(center, np.float64).reshape(-1, 3)
    m = len(center)
    size = np.asarray(size, np.float64)
    if size.shape != (m, 3) or np.any(size <= 0):
        raise ValueError(f"size must be (M, 3) = ({m}, 3) positive w, l, h in metres, got {size.shape}")
    out = np.zeros(m, BOX_DTYPE)
    out["center"], out["size"] = center, size
    if rotation is None:
        yaw = np.zeros(m) if yaw is None else np.asarray(yaw, np.float64).reshape(m)
        out["rotation"] = np.stack([np.cos(yaw / 2), 0 * yaw, 0 * yaw, np.sin(yaw / 2)], axis=1)
    else:
        out["rotation"] = np.asarray(rotation, np.float64).reshape(m, 4)
    rot = box_rotation_matrices(out)
    out["yaw"] = np.arctan2(rot[:, 1, 0], rot[:, 0, 0])
    out["velocity_valid"], out["visibility"], out["category"] = True, 4, "vehicle.car"
    unknown = set(fields) - set(BOX_DTYPE.names)
    if unknown:
        raise ValueError(f"unknown box fields {sorted(unknown)}; fields are {BOX_DTYPE.names}")
    for name, value in fields.items():
        value = np.asarray(value)
        if len(value) != m:
            raise ValueError(f"box field '{name}' has {len(value)} rows, centre has {m}")
        out[name] = value
    return out


def box_rotation_matrices(boxes: np.ndarray) -> np.ndarray:
    """(M, 3, 3) float64 rotation matrices (box axes -> ego) of a :data:`BOX_DTYPE` array."""
    return np.array([Quaternion(q).rotation_matrix for q in boxes["rotation"]]).reshape(-1, 3, 3)


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """The 8 corners of each box in the ego frame, in nuscenes-devkit's ``Box.corners`` order.

    Uses the full ``rotation`` (not only ``yaw``), so the corners equal the devkit's for the same box.

    Returns:
        (M, 8, 3) float64, metres.
    """
    w, l, h = (boxes["size"][:, i, None] for i in range(3))
    x = l / 2 * np.array([1, 1, 1, 1, -1, -1, -1, -1])
    y = w / 2 * np.array([1, -1, -1, 1, 1, -1, -1, 1])
    z = h / 2 * np.array([1, 1, -1, -1, 1, 1, -1, -1])
    local = np.stack([x, y, z], axis=-1)  # (M, 8, 3)
    return np.einsum("mij,mkj->mki", box_rotation_matrices(boxes), local) + boxes["center"][:, None, :]


def box_footprints(boxes: np.ndarray) -> np.ndarray:
    """Bird's-eye footprints: the 4 ground-plane corners ``(x, y)`` of each box from centre, ``w, l`` and ``yaw``.

    Order: front-left, front-right, rear-right, rear-left (counter-clockwise seen from above is
    front-left, rear-left, rear-right, front-right; this order is clockwise, which no rasteriser here minds).
    Ignores the ego pitch/roll in ``rotation`` (it moves footprint corners by millimetres).

    Returns:
        (M, 4, 2) float64, metres in the ego x-y plane.
    """
    w, l = boxes["size"][:, 0, None], boxes["size"][:, 1, None]
    dx = l / 2 * np.array([1, 1, -1, -1])
    dy = w / 2 * np.array([1, -1, -1, 1])
    c, s = np.cos(boxes["yaw"])[:, None], np.sin(boxes["yaw"])[:, None]
    xy = np.stack([c * dx - s * dy, s * dx + c * dy], axis=-1)
    return xy + boxes["center"][:, None, :2]
