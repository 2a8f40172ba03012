"""The six-camera rig of the synthetic ego vehicle, laid out like nuScenes' (names, mounting, fields of
view, firing times), and its per-scene calibration.

Frames as :mod:`toolkit.camera`: camera x right, y down, z forward; ego x forward, y left, z up (origin at
the rear axle on the ground). ``CameraCalibration.rotation_wxyz`` rotates camera axes into the ego frame,
exactly what a nuScenes ``calibrated_sensor`` row stores, and ``translation`` is the optical centre in the
ego frame. Intrinsics are defined for the real nuScenes image size (1600 x 900) and scaled to the
requested one: ``fx, cx`` by ``width / 1600`` and ``fy, cy`` by ``height / 900`` (square pixels for 16:9
sizes; other aspect ratios keep both fields of view and get non-square pixels).

Firing times: in nuScenes a camera is exposed when the spinning LiDAR sweeps across the centre of its
field of view. The sweep starts pointing to ego-left and turns clockwise (seen from above) for
``sweep_s`` (50 ms), ending at the LiDAR timestamp, so a camera with yaw ``psi`` (rad, + = left) fires
``sweep_s * (((pi/2 - psi) mod 2 pi) / 2 pi - 1)`` s relative to the LiDAR (CAM_FRONT_LEFT about -45 ms
first, CAM_BACK_LEFT about -3 ms last), as in the real data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pyquaternion import Quaternion

REFERENCE_SIZE = (1600, 900)  # nuScenes image width, height (px)

# channel -> (yaw of the optical axis in the ego frame in deg (+ = left), optical centre in the ego frame (m),
#             horizontal field of view at the reference size in deg)
RIG: dict[str, tuple[float, tuple[float, float, float], float]] = {
    "CAM_FRONT": (0.0, (1.72, 0.00, 1.52), 70.0),
    "CAM_FRONT_RIGHT": (-55.0, (1.57, -0.50, 1.52), 70.0),
    "CAM_FRONT_LEFT": (55.0, (1.57, 0.50, 1.52), 70.0),
    "CAM_BACK": (180.0, (0.05, 0.00, 1.56), 110.0),
    "CAM_BACK_LEFT": (110.0, (1.05, 0.49, 1.56), 70.0),
    "CAM_BACK_RIGHT": (-110.0, (1.05, -0.49, 1.56), 70.0),
}
CAMERA_CHANNELS = tuple(RIG)

# camera axes (x right, y down, z forward) in the ego frame for a camera looking along ego +x
_CAM_AXES_IN_EGO = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class CameraCalibration:
    """One camera of one scene.

    Attributes:
        channel: ``CAM_FRONT``, ...
        translation: (3,) float64 optical centre in the ego frame, m.
        rotation_wxyz: (4,) float64 unit quaternion, camera axes -> ego axes.
        intrinsic: (3, 3) float64 pinhole matrix at ``width x height``, px.
        width, height: image size, px.
        time_offset_us: capture time minus the sample's LiDAR timestamp, microseconds (negative).
    """

    channel: str
    translation: np.ndarray
    rotation_wxyz: np.ndarray
    intrinsic: np.ndarray
    width: int
    height: int
    time_offset_us: int

    def ego_from_camera(self) -> np.ndarray:
        """(4, 4) float64 ``T_ego_from_camera`` (as the devkit builds it from the table row)."""
        T = np.eye(4)
        T[:3, :3] = Quaternion(self.rotation_wxyz).rotation_matrix
        T[:3, 3] = self.translation
        return T


def parse_image_size(text: str) -> tuple[int, int]:
    """``"800x450"`` -> ``(800, 450)``.

    Raises:
        ValueError: not ``WxH`` with positive integers, or smaller than 16 x 9.
    """
    parts = str(text).lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"image_size must look like 800x450 (WIDTHxHEIGHT), got {text!r}")
    return check_image_size((int(parts[0]), int(parts[1])))


def check_image_size(size) -> tuple[int, int]:
    """Validate an image size ``(width, height)`` in px.

    Raises:
        ValueError: not two integers, or smaller than 16 x 9.
    """
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (width, height) in px, got {size!r}") from None
    if width < 16 or height < 9 or (width, height) != tuple(size):
        raise ValueError(f"image_size must be integers of at least 16 x 9 px, got {size!r}")
    return width, height


def firing_offset_s(yaw: float, sweep_s: float = 0.05) -> float:
    """Capture time of a camera with optical-axis yaw ``yaw`` (rad, ego frame, + = left) relative to the
    end of the LiDAR sweep, s (in ``[-sweep_s, 0)``; see the module docstring)."""
    turned = np.mod(np.pi / 2 - yaw, 2 * np.pi) / (2 * np.pi)
    return float(sweep_s * (turned - 1.0))


def nominal_intrinsic(hfov_deg: float, image_size: tuple[int, int]) -> np.ndarray:
    """(3, 3) pinhole matrix of a ``hfov_deg`` camera centred on the image, scaled from the reference size."""
    width, height = check_image_size(image_size)
    f = REFERENCE_SIZE[0] / 2 / np.tan(np.radians(hfov_deg) / 2)
    sx, sy = width / REFERENCE_SIZE[0], height / REFERENCE_SIZE[1]
    return np.array([[f * sx, 0.0, REFERENCE_SIZE[0] / 2 * sx], [0.0, f * sy, REFERENCE_SIZE[1] / 2 * sy],
                     [0.0, 0.0, 1.0]])


def draw_calibration(rng: np.random.Generator, image_size: tuple[int, int] = (800, 450)) -> list[CameraCalibration]:
    """The rig of one scene: :data:`RIG` with mounting and lens tolerances (about 1 cm, 0.3 deg, 0.5 % focal
    length, 8 px principal point at 1600 x 900), as a real vehicle's calibration differs from nominal.

    Args:
        rng: the scene's generator (consumed: 11 draws per camera).
        image_size: ``(width, height)`` of every camera, px.

    Returns:
        Six :class:`CameraCalibration`, in :data:`CAMERA_CHANNELS` order.

    Raises:
        ValueError: on a bad ``image_size``.
    """
    width, height = check_image_size(image_size)
    sx, sy = width / REFERENCE_SIZE[0], height / REFERENCE_SIZE[1]
    out = []
    for channel, (yaw_deg, t, hfov) in RIG.items():
        t = np.asarray(t, np.float64) + rng.normal(0, 0.01, 3)
        yaw = np.radians(yaw_deg) + rng.normal(0, np.radians(0.3))
        pitch, roll = rng.normal(0, np.radians(0.4)), rng.normal(0, np.radians(0.2))  # about camera x, z
        rz = Quaternion(axis=[0, 0, 1], angle=yaw).rotation_matrix
        tilt = (Quaternion(axis=[1, 0, 0], angle=pitch).rotation_matrix
                @ Quaternion(axis=[0, 0, 1], angle=roll).rotation_matrix)
        rot = rz @ _CAM_AXES_IN_EGO @ tilt
        f = REFERENCE_SIZE[0] / 2 / np.tan(np.radians(hfov) / 2) * (1 + rng.normal(0, 0.005))
        cx, cy = REFERENCE_SIZE[0] / 2 + rng.normal(0, 8), REFERENCE_SIZE[1] / 2 + rng.normal(0, 8)
        K = np.array([[f * sx, 0.0, cx * sx], [0.0, f * sy, cy * sy], [0.0, 0.0, 1.0]])
        offset_us = int(round((firing_offset_s(np.radians(yaw_deg)) + rng.normal(0, 3e-4)) * 1e6))
        out.append(CameraCalibration(channel=channel, translation=t,
                                     rotation_wxyz=np.array(Quaternion(matrix=rot).elements), intrinsic=K,
                                     width=width, height=height, time_offset_us=min(offset_us, -1)))
    return out
