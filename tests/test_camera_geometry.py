"""Camera geometry against nuscenes-devkit on the real nuScenes keyframe: LIDAR_TOP into all six cameras.

The devkit's ``NuScenesExplorer.map_pointcloud_to_image`` keeps the cloud in float32 and rounds after
every step; in the global frame (coordinates ~1200 m, float32 spacing 1.2e-4 m) that moves pixels by up to
~0.03 px. So the projection is compared twice with the devkit's own function: once as shipped (same
points, pixels to 0.05 px), and once with the devkit's point loader widened to float64, where its chain and
ours must agree to 1e-6 px and 1e-9 m.

The second half checks the data the multi-sensor shards store, through the builder and the decode: boxes'
corners and LiDAR points projected with the stored transforms and the decoded intrinsics against the
devkit's, at the stored size and after resizes; then the resize/crop and torch projection helpers.
"""

import numpy as np
import pytest
import torch
import webdataset as wds
from nuscenes.nuscenes import NuScenesExplorer
from nuscenes.utils import geometry_utils
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import BoxVisibility
from pyquaternion import Quaternion

from toolkit.bev import box_corners
from toolkit.camera.augment import decode_jpeg, plain_resize, random_resize_crop
from toolkit.camera.geometry import (in_image, invert_rigid, lidar_to_camera, project_ego_points, project_to_image,
                                     transform_matrix, transform_points)
from toolkit.camera.voxels import invert_rigid as torch_invert_rigid
from toolkit.camera.voxels import project_points, voxel_to_pixel
from toolkit.data.multisensor import MultiSensorConfig, decode_multisensor, read_sample
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
        np.testing.assert_allclose(invert_rigid(T), T_inv, rtol=0, atol=1e-12)
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


# --- through the multi-sensor shards: what the builder stores and the decode returns ------------------------

@pytest.fixture(scope="module")
def shard_samples(real_dataroot, tmp_path_factory):
    """The real keyframe written by the shard builder as stored (all points kept) and resized to 800 x 450."""
    from shards.nuscenes_multisensor import build_nuscenes_multisensor_shards

    out = {}
    for name, size in (("full", None), ("800x450", (800, 450))):
        info = build_nuscenes_multisensor_shards(str(real_dataroot), "v1.0-mini", str(tmp_path_factory.mktemp(name)),
                                                 splits=["mini_train"], image_size=size, min_range_m=0.0,
                                                 progress=False)
        out[name] = next(iter(wds.WebDataset(info["splits"]["mini_train"]["pattern"], shardshuffle=False)))
    return out


def _decoded(sample, height=0, width=0, extrinsics="keyframe"):
    cfg = MultiSensorConfig(image_height=height, image_width=width, max_points=0, targets=False, extrinsics=extrinsics)
    return decode_multisensor(sample, np.random.default_rng(0), cfg), read_sample(sample)


def _to_size(uv, src, dst):
    """Pixel positions of a src (W, H) image in a dst-size resize (toolkit.camera.augment's affine map)."""
    return plain_resize(src, dst).map_pixels(uv)


@pytest.mark.parametrize("stored,decoded", [("full", (0, 0)), ("full", (224, 400)), ("800x450", (0, 0)),
                                            ("800x450", (224, 400))])
def test_shard_boxes_project_like_devkit(nusc, shard_samples, stored, decoded):
    """Box corners from the shard's ego-frame boxes, through its cam->keyframe-ego transforms and the decoded
    intrinsics, land where the devkit's ``get_sample_data(cam)`` boxes project with ``view_points``."""
    d, (arrays, meta) = _decoded(shard_samples[stored], *decoded)
    H, W = d["images"].shape[2:]
    index = {t: i for i, t in enumerate(arrays["boxes"]["token"])}
    corners = box_corners(arrays["boxes"])
    checked = 0
    for i, camera in enumerate(meta["cameras"]):
        _, boxes, K = nusc.get_sample_data(nusc.sample[0]["data"][camera], box_vis_level=BoxVisibility.ANY)
        assert boxes
        for box in boxes:
            ref = _to_size(geometry_utils.view_points(box.corners(), K, normalize=True)[:2].T, (1600, 900), (W, H))
            uv, depth = project_ego_points(corners[index[box.token]], d["intrinsics"][i], d["cam2ego"][i])
            front = depth > 0.1
            np.testing.assert_allclose(uv[front], ref[front], rtol=0, atol=0.5)
            checked += front.sum()
    assert checked > 500


def test_shard_points_project_like_devkit(nusc, shard_samples):
    """The stored keyframe-ego points projected into each camera: the devkit's ``map_pointcloud_to_image``
    keeps the same points and puts them on the same pixels (float32 devkit: 0.05 px; after a resize to
    800 x 450 and a decode to 400 x 224, within 0.5 px of its pixels mapped by the resize)."""
    explorer = NuScenesExplorer(nusc)
    sample = nusc.sample[0]
    small, (arrays_s, _) = _decoded(shard_samples["800x450"], 224, 400)
    _, (arrays, meta) = _decoded(shard_samples["full"])
    np.testing.assert_array_equal(arrays["points"], arrays_s["points"])
    assert len(arrays["points"]) == 34688  # min_range_m=0: the whole cloud
    for i, camera in enumerate(meta["cameras"]):
        ref, depth_ref, _ = explorer.map_pointcloud_to_image(sample["data"]["LIDAR_TOP"], sample["data"][camera])
        uv, depth = project_ego_points(arrays["points"][:, :3], arrays["intrinsics"][i], arrays["cam2keyego"][i])
        keep = in_image(uv, depth, 1600, 900, min_depth=1.0, margin=1.0)
        assert keep.sum() == ref.shape[1] > 2500
        np.testing.assert_allclose(uv[keep], ref[:2].T, rtol=0, atol=0.05)
        np.testing.assert_allclose(depth[keep], depth_ref, rtol=0, atol=2e-4)
        uv_s, _ = project_ego_points(arrays_s["points"][keep, :3], small["intrinsics"][i], small["cam2ego"][i])
        np.testing.assert_allclose(uv_s, _to_size(ref[:2].T, (1600, 900), (400, 224)), rtol=0, atol=0.5)


def test_calibrated_extrinsics_ignore_the_ego_motion(shard_samples):
    """``cam2ego`` (calibrated, Simple-BEV) vs ``cam2keyego`` (exact): CAM_FRONT_LEFT fired 43 ms before the
    LiDAR at ~9 m/s, so the calibrated transform misplaces near box corners by many pixels."""
    exact, (arrays, meta) = _decoded(shard_samples["full"])
    calib, _ = _decoded(shard_samples["full"], extrinsics="calibrated")
    i = meta["cameras"].index("CAM_FRONT_LEFT")
    shift = np.linalg.norm(arrays["cam2keyego"][i][:3, 3] - arrays["cam2ego"][i][:3, 3])
    assert 0.3 < shift < 0.5   # metres of ego motion
    corners = box_corners(arrays["boxes"]).reshape(-1, 3)
    uv_e, depth = project_ego_points(corners, exact["intrinsics"][i], exact["cam2ego"][i])
    uv_c, _ = project_ego_points(corners, calib["intrinsics"][i], calib["cam2ego"][i])
    keep = in_image(uv_e, depth, 1600, 900, min_depth=1.0)
    assert keep.sum() >= 8 and np.median(np.linalg.norm(uv_e[keep] - uv_c[keep], axis=1)) > 10


# --- resize / crop -------------------------------------------------------------------------------------------

K_NUSC = np.array([[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]])


def _blob_jpeg(u, v, size=(1600, 900), sigma=6.0, fmt="JPEG"):
    import io

    from PIL import Image

    W, H = size
    x, y = np.meshgrid(np.arange(W), np.arange(H))
    img = (255 * np.exp(-((x - u) ** 2 + (y - v) ** 2) / (2 * sigma ** 2))).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.repeat(img[..., None], 3, axis=2)).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _centroid(img):
    w = img[..., 0].astype(np.float64)
    w[w < 20] = 0
    y, x = np.nonzero(w)
    return np.array([np.average(x, weights=w[y, x]), np.average(y, weights=w[y, x])])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])  # JPEG: DCT-domain draft decode; PNG: a plain resize
def test_resize_crop_keeps_points_on_the_same_content(seed, fmt):
    """A 3D point is projected, a blob drawn there; after decode + random resize/crop the blob sits where the
    point projects with the updated intrinsics, and that is the affine map of the old pixel."""
    rng = np.random.default_rng(seed)
    point = np.array([rng.uniform(-3, 3), rng.uniform(-1.5, 1.5), rng.uniform(8, 20)])   # camera frame, m
    (u, v), = project_to_image(point[None], K_NUSC)[0]
    t = random_resize_crop((1600, 900), (400, 224), rng, crop_jitter_px=20)
    img = decode_jpeg(_blob_jpeg(u, v, fmt=fmt), t)
    assert img.shape == (224, 400, 3) and img.dtype == np.uint8
    (u2, v2), = project_to_image(point[None], t.intrinsics(K_NUSC))[0]
    np.testing.assert_allclose([u2, v2], t.map_pixels([[u, v]])[0], rtol=0, atol=1e-9)   # the same affine map
    np.testing.assert_allclose(_centroid(img), [u2, v2], rtol=0, atol=0.15)               # on the content


def test_resize_crop_parameters():
    rng = np.random.default_rng(0)
    ts = [random_resize_crop((1600, 900), (800, 448), rng) for _ in range(200)]
    scales = np.array([t.resized[0] / 800 for t in ts])
    assert 0.8 <= scales.min() < 0.85 and 1.15 < scales.max() <= 1.2
    offsets = np.array([t.crop_xy[1] - int((t.resized[1] - 448) / 2) for t in ts])
    assert np.abs(offsets).max() <= 89 and np.abs(offsets).max() > 60   # Simple-BEV: +-int(448 * 0.2) px
    again = random_resize_crop((1600, 900), (800, 448), np.random.default_rng(0))
    assert again == ts[0]   # randomness only from the generator
    plain = plain_resize((1600, 900), (400, 224))
    np.testing.assert_allclose(plain.intrinsics(K_NUSC)[0], [1266.4 / 4, 0, (816.3 + 0.5) / 4 - 0.5])
    np.testing.assert_allclose(plain.intrinsics(K_NUSC)[1], [0, 1266.4 * 224 / 900, (491.5 + 0.5) * 224 / 900 - 0.5])
    with pytest.raises(ValueError, match="scale_range"):
        random_resize_crop((1600, 900), (400, 224), rng, scale_range=(1.2, 0.8))
    with pytest.raises(ValueError, match="expected 1600x900"):
        decode_jpeg(_blob_jpeg(10, 10, size=(320, 180)), plain, name="cam_front.jpg")
    with pytest.raises(ValueError, match="cam_front.jpg: cannot decode"):
        decode_jpeg(_blob_jpeg(10, 10)[:5000], plain, name="cam_front.jpg")


# --- torch projection and voxel -> pixel ------------------------------------------------------------------------

def _forward_camera(x=0.0):
    """cam -> ego of a camera at ego (x, 0, 1.5) looking along ego +x (cam z = ego x, cam x = -ego y)."""
    T = np.eye(4)
    T[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]
    T[:3, 3] = [x, 0, 1.5]
    return T


def test_torch_projection_equals_numpy(shard_samples):
    _, (arrays, _) = _decoded(shard_samples["full"])
    pts = torch.from_numpy(arrays["points"][:500, :3].astype(np.float64))
    K = torch.from_numpy(arrays["intrinsics"])[None]
    T = torch.from_numpy(arrays["cam2keyego"])[None]
    uv, depth = project_points(pts, K, T)
    assert uv.shape == (1, 6, 500, 2) and depth.shape == (1, 6, 500)
    for i in range(6):
        uv_np, depth_np = project_ego_points(pts.numpy(), arrays["intrinsics"][i], arrays["cam2keyego"][i])
        front = depth_np > 1e-3
        np.testing.assert_allclose(uv[0, i][front].numpy(), uv_np[front], rtol=0, atol=1e-7)
        np.testing.assert_allclose(depth[0, i].numpy(), depth_np, rtol=0, atol=1e-9)
    eye = np.broadcast_to(np.eye(4), (6, 4, 4))
    np.testing.assert_allclose((torch_invert_rigid(T) @ T)[0].numpy(), eye, rtol=0, atol=1e-12)


def test_voxel_to_pixel_known_points_and_grid_sample():
    import torch.nn.functional as F

    H, W = 50, 100
    K = torch.tensor([[[[100.0, 0, 49.5], [0, 100.0, 24.5], [0, 0, 1]]]])            # (1, 1, 3, 3)
    T = torch.from_numpy(_forward_camera(1.0)).float()[None, None]                   # (1, 1, 4, 4)
    pts = torch.tensor([[11.0, 0.0, 1.5],     # on the axis -> principal point (49.5, 24.5) -> grid (0, 0)
                        [11.0, 2.0, 1.5],     # 2 m left at 10 m -> u = 49.5 - 20
                        [-5.0, 0.0, 1.5],     # behind the camera
                        [11.0, -6.0, 1.5],    # right of the image (u = 109.5)
                        [11.0, 0.0, 1.5 + 0.254]])  # v = 24.5 - 2.54: still inside
    grid, valid = voxel_to_pixel(pts, K, T, (H, W))
    assert grid.shape == (1, 1, 5, 2) and valid.shape == (1, 1, 5)
    np.testing.assert_allclose(grid[0, 0, 0].numpy(), [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(grid[0, 0, 1].numpy(), [(29.5 + 0.5) / W * 2 - 1, 0.0], atol=1e-6)
    assert valid[0, 0].tolist() == [True, True, False, False, True]
    # sampling an image whose value is its own column / row index returns the projected (u, v)
    cols = torch.arange(W, dtype=torch.float32).expand(H, W)
    rows = torch.arange(H, dtype=torch.float32)[:, None].expand(H, W)
    image = torch.stack([cols, rows])[None]                                         # (1, 2, H, W)
    sampled = F.grid_sample(image, grid.view(1, 1, -1, 2), align_corners=False)[0, :, 0]   # (2, N)
    uv, _ = project_points(pts, K, T)
    ok = valid[0, 0]
    np.testing.assert_allclose(sampled[:, ok].T.numpy(), uv[0, 0][ok].numpy(), atol=1e-4)
    # a whole BEV voxel grid: shapes, and the voxels behind this forward camera are all invalid
    from toolkit.bev import BEVGrid

    centres = torch.from_numpy(BEVGrid().voxel_centers()).float().reshape(-1, 3)
    g, v = voxel_to_pixel(centres, K.expand(2, 6, 3, 3), T.expand(2, 6, 4, 4), (H, W))
    assert g.shape == (2, 6, 8 * 200 * 200, 2) and v.dtype == torch.bool
    assert not v[0, 0][centres[:, 0] < 1.0].any() and v[0, 0].any()
    with pytest.raises(ValueError, match="cam2ego"):
        voxel_to_pixel(centres, K, T[0], (H, W))


def test_token_azimuths_are_the_bearing_of_what_each_pixel_sees(shard_samples):
    """token_fusion's direction embedding (toolkit.tasks.token_fusion.model.token_azimuths), per pixel
    (patch 1) of the real keyframe resized to 800 x 450: at the pixel a LiDAR point >= 5 m away projects to,
    the ray azimuth is the point's bearing seen from that camera's centre (within 1.5 px of angle); the
    principal rays point where the cameras are mounted (front 0, back 180, front-left +55 deg)."""
    from toolkit.tasks.token_fusion.model import token_azimuths

    ex, (arrays, meta) = _decoded(shard_samples["800x450"], 450, 800)
    K, T = ex["intrinsics"].astype(np.float64), ex["cam2ego"].astype(np.float64)
    az = token_azimuths(torch.from_numpy(K)[None], torch.from_numpy(T)[None], 450, 800, 1)[0].numpy()  # (6, H W)
    pts = arrays["points"][:, :3].astype(np.float64)
    checked = 0
    for s, name in enumerate(meta["cameras"]):
        uv, depth = project_ego_points(pts, K[s], T[s])
        rel = pts - T[s, :3, 3]
        ok = in_image(uv, depth, 800, 450) & (np.linalg.norm(rel[:, :2], axis=1) >= 5.0)
        col, row = np.floor(uv[ok]).astype(int).T
        diff = az[s, row * 800 + col] - np.arctan2(rel[ok, 1], rel[ok, 0])
        diff = (diff + np.pi) % (2 * np.pi) - np.pi
        assert ok.sum() > 100 and np.abs(diff).max() < 1.5 / K[s, 0, 0], (name, np.abs(diff).max())
        checked += int(ok.sum())
    assert checked > 10_000
    principal = K.copy()
    principal[:, :2, 2] = 0.5  # a 1 x 1 token grid's one centre (0.5, 0.5) is then the principal point
    yaw = token_azimuths(torch.from_numpy(principal)[None], torch.from_numpy(T)[None], 1, 1, 1)[0, :, 0]
    yaw = dict(zip(meta["cameras"], np.degrees(yaw.numpy())))
    expected = {"CAM_FRONT": 0, "CAM_FRONT_LEFT": 55, "CAM_FRONT_RIGHT": -55, "CAM_BACK": 180}
    for name, deg in expected.items():
        assert abs((yaw[name] - deg + 180) % 360 - 180) < 10, yaw
