"""Camera geometry against nuscenes-devkit on the real nuScenes keyframe: LIDAR_TOP into all six cameras.

The devkit's ``NuScenesExplorer.map_pointcloud_to_image`` keeps the cloud in float32 and rounds after
every step; in the global frame (coordinates ~1200 m, float32 spacing 1.2e-4 m) that moves pixels by up to
~0.03 px. So the projection is compared twice with the devkit's own function: once as shipped (same
points, pixels to 0.05 px), and once with the devkit's point loader widened to float64, where its chain and
ours must agree to 1e-6 px and 1e-9 m.
"""

import numpy as np
import pytest
from nuscenes.nuscenes import NuScenesExplorer
from nuscenes.utils import geometry_utils
from nuscenes.utils.data_classes import LidarPointCloud
from pyquaternion import Quaternion

from toolkit.camera.geometry import in_image, lidar_to_camera, project_to_image, transform_matrix, transform_points
from toolkit.datasets.nuscenes import load_nuscenes, read_pcd_bin

CAMERAS = ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"]


@pytest.fixture(scope="module")
def nusc(real_dataroot):
    return load_nuscenes(real_dataroot, "v1.0-mini")


def _ours(nusc, camera: str, min_depth: float = 1.0, margin: float = 1.0):
    """LIDAR_TOP points of the keyframe projected into ``camera``: (uv, depth) of the points kept."""
    sample = nusc.sample[0]
    points = read_pcd_bin(nusc.get_sample_data_path(sample["data"]["LIDAR_TOP"]))
    cam_sd = nusc.get("sample_data", sample["data"][camera])
    K = nusc.get("calibrated_sensor", cam_sd["calibrated_sensor_token"])["camera_intrinsic"]
    uv, depth = project_to_image(transform_points(lidar_to_camera(nusc, sample["token"], camera), points[:, :3]), K)
    keep = in_image(uv, depth, cam_sd["width"], cam_sd["height"], min_depth=min_depth, margin=margin)
    return uv[keep], depth[keep]


def _devkit(nusc, camera: str):
    """The devkit's projection with its defaults (min_dist 1 m, 1 px border): (uv, depth) of the points kept."""
    sample = nusc.sample[0]
    points, depth, image = NuScenesExplorer(nusc).map_pointcloud_to_image(sample["data"]["LIDAR_TOP"],
                                                                          sample["data"][camera])
    cam_sd = nusc.get("sample_data", sample["data"][camera])
    assert image.size == (cam_sd["width"], cam_sd["height"]) == (1600, 900)
    return points[:2].T, depth


def test_sample_has_six_cameras(nusc):
    assert len(nusc.sample) == 1
    assert set(CAMERAS) <= set(nusc.sample[0]["data"])


@pytest.mark.parametrize("camera", CAMERAS)
def test_projection_equals_devkit_in_float64(nusc, camera, monkeypatch):
    # the devkit's own code path, its point cloud loaded as float64 instead of float32 (values unchanged)
    load32 = LidarPointCloud.from_file.__func__
    monkeypatch.setattr(LidarPointCloud, "from_file",
                        classmethod(lambda cls, path: cls(load32(cls, path).points.astype(np.float64))))
    uv_ref, depth_ref = _devkit(nusc, camera)
    uv, depth = _ours(nusc, camera)
    assert len(uv_ref) > 2500  # thousands of points in every camera
    assert uv.shape == uv_ref.shape  # the same points (both keep the cloud's order)
    np.testing.assert_allclose(uv, uv_ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(depth, depth_ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("camera", CAMERAS)
def test_projection_matches_devkit_as_shipped(nusc, camera):
    uv_ref, depth_ref = _devkit(nusc, camera)
    uv, depth = _ours(nusc, camera)
    assert uv.shape == uv_ref.shape
    np.testing.assert_allclose(uv, uv_ref, rtol=0, atol=0.05)  # float32 rounding in the devkit (see top)
    np.testing.assert_allclose(depth, depth_ref, rtol=0, atol=2e-4)


def test_each_camera_uses_its_own_ego_pose(nusc):
    """The lidar's ego pose in place of the camera's (43 ms earlier for CAM_FRONT_LEFT) moves points by
    tens of pixels: the comparison above would catch a chain that skipped the camera's ego pose."""
    sample = nusc.sample[0]
    camera = "CAM_FRONT_LEFT"
    lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    cam_sd = nusc.get("sample_data", sample["data"][camera])
    lidar_cs = nusc.get("calibrated_sensor", lidar_sd["calibrated_sensor_token"])
    cam_cs = nusc.get("calibrated_sensor", cam_sd["calibrated_sensor_token"])
    points = read_pcd_bin(nusc.get_sample_data_path(lidar_sd["token"]))[:, :3]
    wrong = (transform_matrix(cam_cs["translation"], cam_cs["rotation"], inverse=True)
             @ transform_matrix(lidar_cs["translation"], lidar_cs["rotation"]))
    right = lidar_to_camera(nusc, sample["token"], camera)
    uv_right, depth = project_to_image(transform_points(right, points), cam_cs["camera_intrinsic"])
    uv_wrong, _ = project_to_image(transform_points(wrong, points), cam_cs["camera_intrinsic"])
    keep = in_image(uv_right, depth, cam_sd["width"], cam_sd["height"], min_depth=1.0)
    assert np.median(np.linalg.norm(uv_right[keep] - uv_wrong[keep], axis=1)) > 10


def test_transform_matrix_inverse_is_the_inverse():
    rng = np.random.default_rng(0)
    for _ in range(20):
        t = rng.uniform(-2000, 2000, 3)
        q = rng.normal(size=4) * rng.uniform(0.5, 2.0)  # not unit length: normalised like pyquaternion does
        T = transform_matrix(t, q)
        T_inv = transform_matrix(t, q, inverse=True)
        assert T.dtype == T_inv.dtype == np.float64 and T.shape == T_inv.shape == (4, 4)
        np.testing.assert_allclose(T @ T_inv, np.eye(4), rtol=0, atol=1e-10)  # translations up to 2 km
        np.testing.assert_allclose(T_inv @ T, np.eye(4), rtol=0, atol=1e-10)
        np.testing.assert_allclose(T_inv, np.linalg.inv(T), rtol=0, atol=1e-9)
        np.testing.assert_array_equal(T[3], [0, 0, 0, 1])
        np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), rtol=0, atol=1e-12)
        # the devkit's own transform_matrix gives the same matrices
        for inverse, ours in ((False, T), (True, T_inv)):
            ref = geometry_utils.transform_matrix(t, Quaternion(q), inverse=inverse)
            np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)
        # a point goes there and back
        p = rng.uniform(-50, 50, (5, 3))
        np.testing.assert_allclose(transform_points(T_inv, transform_points(T, p)), p, rtol=0, atol=1e-9)


def test_project_and_mask_by_hand():
    K = np.array([[1000.0, 0.0, 800.0], [0.0, 1000.0, 450.0], [0.0, 0.0, 1.0]])
    pts = np.array([[0.0, 0.0, 10.0],    # optical axis -> principal point
                    [1.0, -0.5, 5.0],    # right and up
                    [0.0, 0.0, -10.0],   # behind the camera
                    [9.0, 0.0, 10.0],    # beyond the right border (u = 1700)
                    [0.0, 0.0, 0.05]])   # in front but nearer than min_depth
    uv, depth = project_to_image(pts, K)
    np.testing.assert_allclose(uv[:2], [[800.0, 450.0], [1000.0, 350.0]])
    np.testing.assert_array_equal(depth, pts[:, 2])
    np.testing.assert_array_equal(in_image(uv, depth, 1600, 900), [True, True, False, False, False])
    np.testing.assert_array_equal(in_image(uv, depth, 1600, 900, min_depth=0.01), [True, True, False, False, True])


def test_errors(nusc):
    token = nusc.sample[0]["token"]
    with pytest.raises(KeyError, match="CAM_NOPE"):
        lidar_to_camera(nusc, token, "CAM_NOPE")
    with pytest.raises(ValueError, match="not a camera"):
        lidar_to_camera(nusc, token, "LIDAR_TOP")
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        transform_points(np.eye(4), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="rotation_wxyz"):
        transform_matrix([0, 0, 0], [0, 0, 1])
    with pytest.raises(ValueError, match="zero quaternion"):
        transform_matrix([0, 0, 0], [0, 0, 0, 0])
