"""One synthetic nuScenes sample across sensors: the LiDAR sweep, the six cameras at their own capture
times, and the per-object labels that need both (visibility, LiDAR points per object).

Poses: the LiDAR sweep gives the lidar pose in the road frame at the keyframe time ``t``; the ego pose
follows from the LiDAR mounting (:data:`shards.synthetic.world.LIDAR_IN_EGO_T`, ``_Q``). The ego drives
straight at constant speed, so at a camera's capture time ``t + dt`` (``dt < 0``) it has the same
orientation, moved by ``ego_speed * dt`` along the road heading; each camera is rendered from that
pose (times its calibration) with the moving objects at ``t + dt``, and the same pose is written to the
camera's ``ego_pose`` row.

Visibility (nuScenes' ``visibility_token``): the fraction of an object's projected area that is visible,
pooled over the six cameras. Per camera, the projected area is the number of pixels whose ray hits the
object's own geometry (its body parts, not its annotation box: an unoccluded car is 100 % visible)
when all other geometry is ignored, clipped to the image; the visible area is the number of pixels whose
rendered object id is the object. ``visibility = sum(visible) / sum(projected)`` over the cameras
(0 when the object projects into no camera), binned as nuScenes: "1" = 0-40 %, "2" = 40-60 %,
"3" = 60-80 %, "4" = 80-100 %. A box entirely hidden behind other geometry therefore gets "1".
"""

from __future__ import annotations

import numpy as np
from pyquaternion import Quaternion

from .appearance import SceneLook
from .camera_render import CameraFrame, pixel_directions, render_camera
from .camera_rig import CameraCalibration
from .lidar_sweep import Sweep
from .world import LIDAR_IN_EGO_Q, LIDAR_IN_EGO_T, Street

VISIBILITY_BINS = (0.4, 0.6, 0.8)  # upper edges of bins "1", "2", "3"


def ego_to_road(lidar_pose: np.ndarray) -> np.ndarray:
    """(4, 4) ego -> road pose from a (4, 4) lidar -> road pose and the fixed LIDAR_TOP mounting
    (the composition the dataroot writes as ``ego_pose``, before road -> global)."""
    lidar_in_ego = np.eye(4)
    lidar_in_ego[:3, :3] = Quaternion(LIDAR_IN_EGO_Q).rotation_matrix
    lidar_in_ego[:3, 3] = LIDAR_IN_EGO_T
    return np.asarray(lidar_pose, np.float64) @ np.linalg.inv(lidar_in_ego)


def ego_at(street: Street, ego_pose: np.ndarray, dt: float) -> np.ndarray:
    """The ego pose (4, 4) ``dt`` seconds after ``ego_pose`` (constant heading and speed)."""
    phi = street.ego_heading
    out = np.array(ego_pose, np.float64)
    out[:3, 3] += np.array([-np.sin(phi), np.cos(phi), 0.0]) * street.ego_speed * dt
    return out


def render_cameras(street: Street, look: SceneLook | None, calibrations: list[CameraCalibration], t: float,
                   lidar_pose: np.ndarray, rng: np.random.Generator | None
                   ) -> tuple[list[CameraFrame], list[np.ndarray]]:
    """Render every camera of a sample whose LiDAR sweep ends at ``t`` (s).

    Args:
        street: the world; look: its appearance (None: label buffers only, black images).
        calibrations: the scene's rig (:func:`shards.synthetic.camera_rig.draw_calibration`).
        lidar_pose: (4, 4) lidar -> road pose of the sweep (``Sweep.lidar_pose``).
        rng: sensor-noise generator (None: no noise).

    Returns:
        (frames, ego poses): one :class:`CameraFrame` and one (4, 4) ego -> road pose at the camera's capture
        time per calibration, in order.
    """
    ego = ego_to_road(lidar_pose)
    frames, poses = [], []
    for cal in calibrations:
        dt = cal.time_offset_us * 1e-6
        ego_cam = ego_at(street, ego, dt)
        frames.append(render_camera(street, look, cal.channel, cal.intrinsic, cal.width, cal.height,
                                    ego_cam @ cal.ego_from_camera(), t + dt, rng,
                                    pixel_directions(cal.intrinsic, cal.width, cal.height)))
        poses.append(ego_cam)
    return frames, poses


def visibility_fraction(frames: list[CameraFrame]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per object: visible pixels, projected pixels (both (n_objects,) int64, summed over ``frames``) and
    their ratio (float64, 0 where nothing projects)."""
    visible = np.sum([f.visible_px for f in frames], axis=0).astype(np.int64)
    projected = np.sum([f.projected_px for f in frames], axis=0).astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(projected > 0, visible / np.maximum(projected, 1), 0.0)
    return visible, projected, frac


def visibility_token(fraction: float) -> str:
    """nuScenes visibility token ``"1"``-``"4"`` of a visible fraction in [0, 1]."""
    return str(1 + int(np.searchsorted(VISIBILITY_BINS, float(fraction), side="right")))


def lidar_object_ids(street: Street, sweep: Sweep, t: float, tolerance: float = 0.06) -> np.ndarray:
    """The object each LiDAR return lies on, recovered from geometry.

    The sweep's points are exact surface hits (up to 2 cm range noise) of the objects placed at the sweep's
    end time ``t``, so a return belongs to the object whose part (box or cylinder, grown by ``tolerance`` m)
    contains it and that lies more than 3 cm above the object's bottom (returns from the road or kerb it
    stands on are not its own). Returns within 1 m of the sensor (ego roof, no-return rays) get -1. The
    counts per object match ``sweep.hits_per_object`` up to a few points per sweep.

    Args:
        street, sweep, t: the world, a sweep rendered from it and the sweep's end time (s).

    Returns:
        (N,) int64 object index per point of ``sweep.points`` (-1 = none).
    """
    pts = sweep.points[:, :3].astype(np.float64)
    road = pts @ sweep.lidar_pose[:3, :3].T + sweep.lidar_pose[:3, 3]
    out = np.full(len(pts), -1, np.int64)
    far = np.linalg.norm(pts, axis=1) >= 1.0
    for k in np.nonzero(sweep.hits_per_object > 0)[0]:
        obj = street.objects[k]
        c = obj.centre_at(t)
        cy, sy = np.cos(obj.yaw), np.sin(obj.yaw)
        near = far & (np.hypot(road[:, 0] - c[0], road[:, 1] - c[1]) < np.hypot(*obj.size[:2]) / 2 + 1.0)
        cand = np.nonzero(near)[0]
        if not len(cand):
            continue
        q = road[cand]
        inside = np.zeros(len(cand), bool)
        bottom = c[2] - obj.size[2] / 2
        above = q[:, 2] > bottom + 0.03
        for kind, p, _mat in obj.parts:
            ox, oy = p[0] * cy - p[1] * sy, p[0] * sy + p[1] * cy
            rx, ry = q[:, 0] - c[0] - ox, q[:, 1] - c[1] - oy
            z0 = bottom + p[2]
            if kind == "box":
                lx, ly = cy * rx + sy * ry, -sy * rx + cy * ry
                inside |= (np.abs(lx) <= p[3] / 2 + tolerance) & (np.abs(ly) <= p[4] / 2 + tolerance) & (
                    q[:, 2] >= z0 - tolerance) & (q[:, 2] <= z0 + p[5] + tolerance)
            else:
                inside |= (np.hypot(rx, ry) <= p[3] + tolerance) & (q[:, 2] >= z0 - tolerance) & (
                    q[:, 2] <= z0 + p[4] + tolerance)
        out[cand[inside & above]] = k
    return out
