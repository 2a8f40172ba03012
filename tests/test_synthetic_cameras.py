"""Six synthetic nuScenes cameras: the devkit reads them like real data, the renders agree with the
calibration tables and the LiDAR, visibility and point counts follow the renders, output is
deterministic, and the streets are as busy as nuScenes keyframes. Small images (320 x 180) keep it fast."""

from __future__ import annotations

import hashlib

import matplotlib
import numpy as np
import pytest
from PIL import Image

from shards.synthetic.camera_rig import CAMERA_CHANNELS, draw_calibration, firing_offset_s, parse_image_size
from shards.synthetic.nuscenes_dataroot import annotation_labels, generate_dataroot, open_scene, token
from shards.synthetic.scene_render import (ego_to_road, lidar_object_ids, render_cameras, visibility_fraction,
                                           visibility_token)

matplotlib.use("Agg")

SEED, N_SAMPLES, SIZE = 5, 3, (320, 180)


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory):
    return generate_dataroot(tmp_path_factory.mktemp("cams") / "dataroot", scenes=1, samples_per_scene=N_SAMPLES,
                             seed=SEED, cameras=True, image_size=SIZE, progress=False)


@pytest.fixture(scope="module")
def nusc(dataroot):
    from nuscenes.nuscenes import NuScenes

    return NuScenes("v1.0-mini", str(dataroot), verbose=False)


@pytest.fixture(scope="module")
def renders():
    """The same scene rendered again in memory, with the label buffers the dataroot does not hold."""
    scene, samples = open_scene(SEED, 0, N_SAMPLES, cameras=True, image_size=SIZE)
    return scene, list(samples)


def _keyframes(nusc):
    return sorted(nusc.sample, key=lambda s: s["timestamp"])


def test_devkit_reads_cameras(nusc, dataroot, tmp_path):
    from nuscenes.nuscenes import NuScenesExplorer

    assert {s["channel"]: s["modality"] for s in nusc.sensor} == {"LIDAR_TOP": "lidar",
                                                                   **{c: "camera" for c in CAMERA_CHANNELS}}
    for sample in _keyframes(nusc):
        assert set(sample["data"]) == {"LIDAR_TOP", *CAMERA_CHANNELS}
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        for channel in CAMERA_CHANNELS:
            sd = nusc.get("sample_data", sample["data"][channel])
            path, boxes, K = nusc.get_sample_data(sd["token"])
            assert K.shape == (3, 3) and (sd["width"], sd["height"]) == SIZE and sd["fileformat"] == "jpg"
            with Image.open(path) as im:
                assert im.format == "JPEG" and im.size == SIZE
            assert -50_000 < sd["timestamp"] - lidar["timestamp"] < 0  # fired during the sweep
            assert sd["ego_pose_token"] == sd["token"] != lidar["ego_pose_token"]
            for box in boxes:  # boxes come in the camera frame: in front of it
                assert box.center[2] > -np.linalg.norm(box.wlh)
    # prev / next chains per channel, in time order
    first = _keyframes(nusc)[0]
    for channel in CAMERA_CHANNELS:
        chain, tok = [], first["data"][channel]
        while tok:
            sd = nusc.get("sample_data", tok)
            assert sd["channel"] == channel
            chain.append(sd["timestamp"])
            tok = sd["next"]
        assert len(chain) == N_SAMPLES and chain == sorted(chain)
    nusc.render_sample(first["token"], out_path=str(tmp_path / "sample.png"), verbose=False)
    assert (tmp_path / "sample.png").stat().st_size > 10_000
    points, depths, image = NuScenesExplorer(nusc).map_pointcloud_to_image(first["data"]["LIDAR_TOP"],
                                                                           first["data"]["CAM_FRONT"])
    assert points.shape[0] == 3 and points.shape[1] > 500 and image.size == SIZE


def test_rig_is_laid_out_like_nuscenes():
    cal = {c.channel: c for c in draw_calibration(np.random.default_rng(0), (800, 450))}
    assert tuple(cal) == CAMERA_CHANNELS
    for channel, yaw_deg, hfov in [("CAM_FRONT", 0, 70), ("CAM_FRONT_RIGHT", -55, 70), ("CAM_FRONT_LEFT", 55, 70),
                                   ("CAM_BACK", 180, 110), ("CAM_BACK_LEFT", 110, 70), ("CAM_BACK_RIGHT", -110, 70)]:
        c = cal[channel]
        R = c.ego_from_camera()[:3, :3]
        axis = R[:, 2]  # optical axis in the ego frame
        yaw_error = (np.degrees(np.arctan2(axis[1], axis[0])) - yaw_deg + 180) % 360 - 180
        assert yaw_error == pytest.approx(0, abs=1.5)
        assert R[2, 1] == pytest.approx(-1, abs=0.01)  # camera y (down) is ego -z
        assert 1.4 < c.translation[2] < 1.7
        assert np.degrees(2 * np.arctan(c.width / 2 / c.intrinsic[0, 0])) == pytest.approx(hfov, abs=1.5)
    offsets = [cal[c].time_offset_us for c in CAMERA_CHANNELS]
    assert all(-50_000 < o < 0 for o in offsets)
    assert min(offsets) == cal["CAM_FRONT_LEFT"].time_offset_us and max(offsets) == cal["CAM_BACK_LEFT"].time_offset_us
    assert firing_offset_s(0.0) == pytest.approx(-0.0375)
    small = draw_calibration(np.random.default_rng(0), (400, 225))
    assert np.allclose(small[0].intrinsic[:2], cal["CAM_FRONT"].intrinsic[:2] / 2)


def test_renders_agree_with_calibration_and_lidar(nusc, renders):
    """LiDAR returns on static objects, projected through the tables as the devkit projects them
    (lidar -> ego(t_lidar) -> global -> ego(t_cam) -> camera), land on the same object in the camera's
    id buffer wherever they are not hidden (point depth <= rendered depth + 0.3 m)."""
    from toolkit.camera.geometry import in_image, lidar_to_camera, project_to_image, transform_points

    scene, samples = renders
    agree = checked = 0
    for rec, sample in zip(_keyframes(nusc), samples):
        ids = lidar_object_ids(scene.street, sample.sweep, sample.t)
        counts = np.bincount(ids[ids >= 0], minlength=len(scene.street.objects))
        assert np.abs(counts - sample.sweep.hits_per_object).sum() <= 0.02 * sample.sweep.hits_per_object.sum() + 5
        static = np.array([np.hypot(*o.velocity) == 0 for o in scene.street.objects] + [False])
        for frame in sample.cameras:
            sd = nusc.get("sample_data", rec["data"][frame.channel])
            K = np.array(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["camera_intrinsic"])
            with Image.open(nusc.get_sample_data_path(sd["token"])) as im:  # the written image is this render
                assert np.abs(np.asarray(im, np.float32) - frame.image).mean() < 4
            uv, z = project_to_image(transform_points(lidar_to_camera(nusc, rec["token"], frame.channel),
                                                      sample.sweep.points[:, :3]), K)
            m = in_image(uv, z, *SIZE) & (ids >= 0) & static[ids]
            # pixel centres at integer coordinates: the nearest pixel is round(u), round(v)
            row = np.minimum(np.floor(uv[m, 1] + 0.5).astype(int), SIZE[1] - 1)
            col = np.minimum(np.floor(uv[m, 0] + 0.5).astype(int), SIZE[0] - 1)
            unhidden = z[m] <= frame.depth[row, col] + 0.3
            agree += (frame.object_id[row, col] == ids[m])[unhidden].sum()
            checked += unhidden.sum()
    assert checked > 500
    assert agree / checked >= 0.95, f"{agree}/{checked} projected returns on their object"


def test_culling_is_exact(renders):
    """The culled renderer sees exactly what casting every pixel against every primitive sees."""
    from shards.synthetic.camera_render import pixel_directions, render_camera
    from shards.synthetic.raycast import ray_boxes, ray_cylinders, ray_ground, ray_spheres
    from shards.synthetic.world import _primitives

    scene, samples = renders
    width, height = 80, 45
    for cal, frame in zip(scene.calibrations, samples[1].cameras):
        K = cal.intrinsic * np.array([[width / SIZE[0]], [height / SIZE[1]], [1.0]])
        small = render_camera(scene.street, None, cal.channel, K, width, height, frame.camera_to_road, frame.t)
        pose = frame.camera_to_road
        d = pixel_directions(K, width, height).reshape(-1, 3).astype(np.float64) @ pose[:3, :3].T
        o = np.broadcast_to(pose[:3, 3], d.shape).copy()
        boxes, _bm, bobj, _bw, cyls, _cm, cobj, sphs, _sm = _primitives(scene.street, frame.t)
        (tb, ib), (tc, ic), (ts, _) = ray_boxes(o, d, boxes), ray_cylinders(o, d, cyls), ray_spheres(o, d, sphs)
        t = np.stack([ray_ground(o, d), tb, tc, ts], 1)
        kind = t.argmin(1)
        obj = np.where(kind == 1, bobj[ib], np.where(kind == 2, cobj[ic], -1))
        assert np.array_equal(obj, small.object_id.ravel())
        hit = np.isfinite(t.min(1)) & np.isfinite(small.depth.ravel())
        assert np.mean(np.isfinite(t.min(1)) != np.isfinite(small.depth.ravel())) < 0.002  # float32 at the horizon
        depth = t.min(1)[hit] * (d[hit] @ pose[:3, :3])[:, 2]
        assert np.mean(np.abs(depth - small.depth.ravel()[hit]) < 1e-3 * depth + 1e-3) > 0.999


def test_shadow_rays_match_general_casts():
    from shards.synthetic.raycast import (box_blocks, cylinder_blocks, ray_boxes, ray_cylinders, ray_spheres,
                                          sphere_blocks)

    rng = np.random.default_rng(0)
    p = rng.uniform(-4, 4, (4000, 3))
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    dirs = np.broadcast_to(d, p.shape).copy()
    box = np.array([0.5, -0.3, 0.2, 1.0, 2.0, 0.7, 0.6])
    cyl, sph = np.array([0.2, 0.1, -1.0, 1.2, 2.0]), np.array([0.0, 1.0, 0.5, 1.5])
    for blocks, cast, prim in [(box_blocks, ray_boxes, box), (cylinder_blocks, ray_cylinders, cyl),
                               (sphere_blocks, ray_spheres, sph)]:
        t, _ = cast(p, dirs, prim[None])
        got = blocks(p, d, prim)
        assert np.mean(got[np.isfinite(t)]) == 1.0  # every front hit of the general caster blocks
        assert got.sum() >= np.isfinite(t).sum()    # plus origins inside the primitive


def test_camera_and_lidar_agree_on_lane_markings(renders):
    """The ground materials the cameras paint are those the LiDAR returns: marking returns are bright."""
    from shards.synthetic.world import MATERIAL_IDS, ground_material

    scene, samples = renders
    sweep = samples[0].sweep
    road = sweep.points[:, :3].astype(np.float64) @ sweep.lidar_pose[:3, :3].T + sweep.lidar_pose[:3, 3]
    ground = (np.abs(road[:, 2]) < 0.03) & (np.linalg.norm(sweep.points[:, :3], axis=1) > 2)
    mat = ground_material(scene.street, road[ground, 0], road[ground, 1])
    intensity = sweep.points[ground, 3]
    marking, asphalt = mat == MATERIAL_IDS["marking"], mat == MATERIAL_IDS["asphalt"]
    assert marking.sum() > 10
    assert np.median(intensity[marking]) > 3 * np.median(intensity[asphalt])


def test_annotations_follow_renders(nusc, renders):
    scene, samples = renders
    instance_of = {token("instance", SEED, 0, k): k for k in range(len(scene.street.objects))}
    for rec, sample in zip(_keyframes(nusc), samples):
        visible, projected, fraction = visibility_fraction(sample.cameras)
        assert np.all(visible <= projected)
        labels = annotation_labels(scene.street, sample)
        anns = [nusc.get("sample_annotation", a) for a in rec["anns"]]
        assert sorted(instance_of[a["instance_token"]] for a in anns) == sorted(labels)
        ego_xy = ego_to_road(sample.sweep.lidar_pose)[:2, 3]
        for a in anns:
            k = instance_of[a["instance_token"]]
            assert a["num_lidar_pts"] == sample.sweep.hits_per_object[k]
            assert a["visibility_token"] == visibility_token(fraction[k])
            if visible[k] == 0:
                assert a["visibility_token"] == "1"
        for k in set(range(len(scene.street.objects))) - set(labels):  # left out: no return, not seen within 60 m
            dist = np.hypot(*(scene.street.objects[k].centre_at(sample.t)[:2] - ego_xy))
            assert sample.sweep.hits_per_object[k] == 0 and (visible[k] == 0 or dist > 60)
    assert [visibility_token(f) for f in (0.0, 0.39, 0.4, 0.59, 0.6, 0.79, 0.8, 1.0)] == list("11223344")


def test_hidden_box_gets_visibility_1():
    """A car inside a building-sized box is hidden from every camera: bin "1"; a car in the open: "4";
    a car behind a low wall: in between."""
    from shards.synthetic.lidar_sweep import lidar_pose_at
    from shards.synthetic.world import Street, _box, _vehicle

    rng = np.random.default_rng(1)
    street = Street(road_half_width=6.0, lane_x=2.0, ego_speed=0.0, ego_heading=0.0, length=10.0)
    hidden = _vehicle(rng, "vehicle.car", -2.0, 15.0, np.pi / 2, (0, 0), "vehicle.parked")
    open_car = _vehicle(rng, "vehicle.car", 2.0, -12.0, np.pi / 2, (0, 0), "vehicle.parked")
    walled = _vehicle(rng, "vehicle.car", 9.0, 2.0, np.pi / 2, (0, 0), "vehicle.parked")
    street.objects += [hidden, open_car, walled]
    street.static_boxes.append((_box(-2.0, 15.0, 0.0, 4.0, 7.0, 3.0), "wall", False))  # encloses `hidden`
    street.static_boxes.append((_box(6.5, 2.0, 0.0, 0.3, 8.0, 1.0), "wall", False))  # hides half of `walled`
    frames, _ = render_cameras(street, None, draw_calibration(rng, SIZE), 0.0, lidar_pose_at(street, 0.0), None)
    visible, projected, fraction = visibility_fraction(frames)
    assert projected[0] > 100 and visible[0] == 0 and visibility_token(fraction[0]) == "1"
    assert visible[1] == projected[1] > 100 and visibility_token(fraction[1]) == "4"
    assert 0.2 < fraction[2] < 0.8 and visibility_token(fraction[2]) in "123"


def test_deterministic_and_lidar_independent_of_cameras(tmp_path):
    def digests(root, suffixes):
        return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in suffixes}

    kw = dict(scenes=1, samples_per_scene=2, seed=11, image_size=(160, 90), progress=False)
    a = digests(generate_dataroot(tmp_path / "a", **kw), {".bin", ".json", ".jpg"})
    b = digests(generate_dataroot(tmp_path / "b", **kw), {".bin", ".json", ".jpg"})
    assert a == b and sum(k.endswith(".jpg") for k in a) == 12
    lidar_only = digests(generate_dataroot(tmp_path / "c", cameras=False, **kw), {".bin"})
    assert lidar_only == {k: v for k, v in a.items() if k.endswith(".bin")}
    assert not (tmp_path / "c" / "samples" / "CAM_FRONT").exists()


def test_streets_are_busy_and_all_visibility_bins_occur():
    """A small proxy of the full statistics (report: 8 scenes x 10 samples at 800 x 450): annotated
    vehicles within |x|, |y| <= 50 m of the keyframe ego, per sample, and the visibility bins."""
    vehicles, bins = [], set()
    for index in range(6):
        scene, samples = open_scene(0, index, 2, cameras=True, image_size=(192, 108))
        for sample in samples:
            world_from_ego = ego_to_road(sample.sweep.lidar_pose)
            n = 0
            for k, (_pts, vis) in annotation_labels(scene.street, sample).items():
                obj = scene.street.objects[k]
                bins.add(vis)
                p = np.linalg.solve(world_from_ego, np.r_[obj.centre_at(sample.t), 1.0])
                n += obj.category.startswith("vehicle") and abs(p[0]) <= 50 and abs(p[1]) <= 50
            vehicles.append(n)
    assert np.mean(vehicles) >= 10, vehicles
    assert bins == {"1", "2", "3", "4"}


def test_bad_arguments_raise_clear_errors(tmp_path, capsys):
    from shards.__main__ import main

    for bad in ("800by450", "800x", "0x450", "8x4"):
        with pytest.raises(ValueError, match="image_size"):
            parse_image_size(bad)
    with pytest.raises(ValueError, match="image_size"):
        generate_dataroot(tmp_path / "x", scenes=1, samples_per_scene=1, image_size=(800, 0), progress=False)
    assert not (tmp_path / "x").exists()
    assert main(["synthetic-nuscenes", "--out", str(tmp_path / "y"), "--image-size", "big"]) == 2
    assert "image_size" in capsys.readouterr().err
    with pytest.raises(ValueError, match="n_samples"):
        open_scene(0, 0, 0)
