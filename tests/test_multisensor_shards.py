"""Multi-sensor shards: the real keyframe and a synthetic dataroot with cameras -> ``python -m shards nuscenes``
-> tar shards -> webdataset loaders -> decode, with real components (devkit, tar files, worker processes)."""

import inspect
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from conftest import run_cli
from shards.nuscenes_multisensor import build_nuscenes_multisensor_shards
from toolkit.bev import BOX_DTYPE
from toolkit.camera.geometry import transform_matrix
from toolkit.data.multisensor import SHARD_KEYS, MultiSensorConfig, MultiSensorDecoder, decode_multisensor, read_sample
from toolkit.data.pipeline import eval_loader, expand_shards, train_loader
from toolkit.datasets.nuscenes import CAMERAS, load_nuscenes


def _first(pattern):
    return next(iter(wds.WebDataset(pattern, shardshuffle=False)))


@pytest.fixture(scope="module")
def real_shards(real_dataroot, tmp_path_factory):
    out = tmp_path_factory.mktemp("real_ms")
    r = run_cli(["-m", "shards", "nuscenes", "--dataroot", str(real_dataroot), "--out", str(out),
                 "--split", "mini_train,mini_val", "--sweeps", "2"], timeout=120)
    assert r.returncode == 0, r.stderr
    return out, r


def test_real_keyframe_is_stored_as_read(real_dataroot, real_shards):
    out, r = real_shards
    assert "mini_train: 1 keyframes (1 scenes) in 1 shards" in r.stdout
    info = json.loads((out / "info.json").read_text())
    assert list(info["splits"]) == ["mini_train"] and info["empty_splits"] == ["mini_val"]   # scene-0061: mini_train
    assert "mini_val: none of its scenes is in this dataroot" in r.stdout
    assert not list(out.glob("*.tmp"))
    with tarfile.open(out / "mini_train-000000.tar") as tar:
        exts = sorted(m.name.split(".", 1)[1] for m in tar)
    assert exts == sorted(SHARD_KEYS)
    sample = _first(str(out / "mini_train-000000.tar"))
    arrays, meta = read_sample(sample)
    nusc = load_nuscenes(real_dataroot, "v1.0-mini")
    s = nusc.sample[0]
    assert meta["cameras"] == list(CAMERAS) and meta["sample_token"] == s["token"] == sample["__key__"].split("_")[1]
    assert meta["scene_name"] == "scene-0061" and meta["timestamp_us"] == s["timestamp"]
    for i, cam in enumerate(CAMERAS):
        sd = nusc.get("sample_data", s["data"][cam])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        assert arrays["jpegs"][i] == Path(nusc.get_sample_data_path(sd["token"])).read_bytes()   # untouched
        np.testing.assert_array_equal(arrays["intrinsics"][i], cs["camera_intrinsic"])
        np.testing.assert_allclose(arrays["cam2ego"][i], transform_matrix(cs["translation"], cs["rotation"]),
                                   atol=1e-12)
        assert meta["camera_timestamps_us"][i] == sd["timestamp"] and meta["image_sizes"][i] == [1600, 900]
    # points: keyframe only (no earlier sweeps in this dataroot), a time-lag column of zeros, < 1 m dropped
    assert meta["sweeps"] == 0 and meta["point_columns"][-1] == "time_lag"
    assert arrays["points"].shape == (26659, 6) and not arrays["points"][:, 5].any()
    # boxes
    boxes = arrays["boxes"]
    assert boxes.dtype == BOX_DTYPE and len(boxes) == 68
    assert sorted(boxes["token"]) == sorted(s["anns"])
    assert (boxes["category"] == "vehicle.truck").sum() == 2 and set(boxes["visibility"]) == {4}
    assert not boxes["velocity_valid"].any() and not boxes["velocity"].any()   # no prev/next: devkit NaN -> 0
    first = boxes[list(boxes["token"]).index(s["anns"][0])]
    assert first["num_lidar_pts"] == 1 and first["category"] == "human.pedestrian.adult"
    np.testing.assert_allclose(first["size"], [0.621, 0.669, 1.642])


def test_resized_images_and_intrinsics(real_dataroot, tmp_path):
    info = build_nuscenes_multisensor_shards(str(real_dataroot), "v1.0-mini", str(tmp_path), image_size=(800, 450),
                                             progress=False)
    assert list(info["splits"]) == ["train"]   # no --split: all scenes in train
    arrays, meta = read_sample(_first(info["splits"]["train"]["pattern"]))
    nusc = load_nuscenes(real_dataroot, "v1.0-mini")
    sd = nusc.get("sample_data", nusc.sample[0]["data"]["CAM_FRONT"])
    K = np.array(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["camera_intrinsic"])
    i = meta["cameras"].index("CAM_FRONT")
    np.testing.assert_allclose(arrays["intrinsics"][i][:2, :2], K[:2, :2] / 2)
    np.testing.assert_allclose(arrays["intrinsics"][i][:2, 2], (K[:2, 2] + 0.5) / 2 - 0.5)
    assert meta["image_sizes"][i] == [800, 450] and meta["source_image_sizes"][i] == [1600, 900]
    from PIL import Image

    assert Image.open(io.BytesIO(arrays["jpegs"][i])).size == (800, 450)


def test_decode_shapes_dtypes_and_rng(real_shards):
    sample = _first(str(real_shards[0] / "mini_train-000000.tar"))
    d = MultiSensorDecoder(MultiSensorConfig(augment=True, max_points=30000))
    a, b, c = (d(sample, np.random.default_rng(seed)) for seed in (1, 1, 2))
    shapes = {k: (v.shape, str(v.dtype)) for k, v in a.items() if k != "key"}
    assert shapes == {"images": ((6, 3, 224, 400), "uint8"), "intrinsics": ((6, 3, 3), "float32"),
                      "cam2ego": ((6, 4, 4), "float32"), "ego2global": ((4, 4), "float64"),
                      "points": ((30000, 6), "float32"), "points_mask": ((30000,), "bool"), "num_points": ((), "int64"),
                      "seg": ((1, 200, 200), "float32"), "valid": ((1, 200, 200), "float32"),
                      "center": ((1, 200, 200), "float32"), "offset": ((2, 200, 200), "float32")}
    for k in a:   # randomness only from the generator: same seed, same sample
        assert np.array_equal(a[k], b[k]), k
    assert not np.array_equal(a["images"], c["images"]) and not np.array_equal(a["intrinsics"], c["intrinsics"])
    stored = read_sample(sample)[0]["points"]
    assert len(stored) == 26659   # fewer than max_points: padded with zeros, masked
    padded = a
    assert padded["num_points"] == 26659 and padded["points_mask"].sum() == 26659 and not padded["points"][26659:].any()
    capped = MultiSensorDecoder(MultiSensorConfig(max_points=1000))(sample, np.random.default_rng(0))
    rows = {r.tobytes() for r in stored}
    assert capped["num_points"] == 1000 and all(r.tobytes() in rows for r in capped["points"])
    f = decode_multisensor(sample, np.random.default_rng(0), MultiSensorConfig(image_dtype="float32", targets=False,
                                                                            max_points=0))
    assert f["images"].dtype == np.float32 and 0 <= f["images"].min() and f["images"].max() <= 1
    assert set(f) == {"images", "intrinsics", "cam2ego", "ego2global", "key"}
    with pytest.raises(ValueError, match="extrinsics"):
        MultiSensorDecoder(MultiSensorConfig(extrinsics="lidar"))


def _corrupt_copy(src: Path, dst: Path, how: str) -> None:
    """Copy a one-sample shard twice (keys a_, b_): sample b_'s CAM_FRONT image truncated or one bit flipped."""
    with tarfile.open(src) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(dst, "w") as out:
        for prefix in ("a_", "b_"):
            for name, data in members:
                if prefix == "b_" and name.endswith(".cam_front.jpg"):
                    data = data[: len(data) // 2] if how == "truncated" else \
                        data[:50000] + bytes([data[50000] ^ 1]) + data[50001:]
                info = tarfile.TarInfo(prefix + name)
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("how", ["truncated", "bitflip"])
def test_corrupt_jpeg_is_skipped_and_counted(real_shards, tmp_path, how):
    bad = tmp_path / "bad-000000.tar"
    _corrupt_copy(real_shards[0] / "mini_train-000000.tar", bad, how)
    decode = MultiSensorDecoder(MultiSensorConfig(max_points=0))
    sample = [s for s in wds.WebDataset(str(bad), shardshuffle=False) if s["__key__"].startswith("b_")][0]
    with pytest.raises(ValueError, match="cam_front.jpg" if how == "truncated" else "CRC-32"):
        decode(sample, np.random.default_rng(0))
    loader = eval_loader(str(bad), decode, 1, keys=SHARD_KEYS)
    keys = [k for batch in loader for k in batch["key"]]
    assert keys == [keys[0]] and keys[0].startswith("a_") and loader.skipped == 1
    loader = train_loader(str(bad), decode, 2, seed=0, num_workers=0, shuffle_buffer=1, keys=SHARD_KEYS)
    it = iter(loader)
    for _ in range(2):
        assert all(k.startswith("a_") for k in next(it)["key"])
    assert loader.skipped >= 1
    it.close()


def test_cli_errors(real_dataroot, tmp_path, capsys):
    from shards.__main__ import main

    base = ["nuscenes", "--dataroot", str(real_dataroot), "--out", str(tmp_path)]
    for extra, message in ((["--split", "nope"], "unknown --split 'nope'"),
                           (["--split", "val"], "none of its scenes is in"),
                           (["--dataroot", str(tmp_path / "no")], "does not exist")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    for extra, message in ((["--split", "val", "--val-fraction", "0.1"], "not allowed with"),
                           (["--image-size", "800"], "WIDTHxHEIGHT")):
        with pytest.raises(SystemExit) as exc:
            main(base + extra)
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_preview_pictures(real_dataroot, real_shards, tmp_path):
    from PIL import Image

    from toolkit.visualize import main

    assert main(["--dataroot", str(real_dataroot), "--out", str(tmp_path), "--name", "a", "--camera-width", "160"]) == 0
    assert main(["--shards", str(real_shards[0] / "mini_train-*.tar"), "--out", str(tmp_path), "--name", "b",
                 "--camera-width", "160", "--colors", "64"]) == 0
    assert Image.open(tmp_path / "a_cameras.png").size == (480, 180)
    for name in ("a_bev.png", "b_cameras.png", "b_bev.png"):
        assert Image.open(tmp_path / name).size[0] > 300
    assert main(["--shards", str(real_shards[0] / "mini_train-*.tar"), "--out", str(tmp_path), "--index", "5"]) == 2


# --- synthetic dataroot with cameras ----------------------------------------------------------------------------

def _generator_has_cameras() -> bool:
    from shards.synthetic.nuscenes_dataroot import generate_dataroot

    return "cameras" in inspect.signature(generate_dataroot).parameters


needs_cameras = pytest.mark.skipif(not _generator_has_cameras(),
                                   reason="shards.synthetic.nuscenes_dataroot.generate_dataroot has no 'cameras' "
                                          "parameter yet (synthetic camera generator not merged)")


@pytest.fixture(scope="module")
def synthetic_shards(tmp_path_factory):
    from shards.synthetic.nuscenes_dataroot import generate_dataroot

    root = generate_dataroot(tmp_path_factory.mktemp("synth_cams") / "dataroot", cameras=True, image_size=(320, 180),
                             scenes=2, samples_per_scene=2, seed=0, progress=False)
    out = tmp_path_factory.mktemp("synth_ms")
    info = build_nuscenes_multisensor_shards(str(root), "v1.0-mini", str(out), val_fraction=0.5, maxcount=1, sweeps=1,
                                             progress=False)
    return root, out, info


@needs_cameras
def test_synthetic_shards_read_back_with_two_workers(synthetic_shards):
    root, out, info = synthetic_shards
    assert {n: s["samples_per_shard"] for n, s in info["splits"].items()} == {"train": [1, 1], "val": [1, 1]}
    spec = "::".join(info["splits"][n]["pattern"] for n in ("train", "val"))
    expected = [s["__key__"] for s in wds.WebDataset(expand_shards(spec), shardshuffle=False)]
    decode = MultiSensorDecoder(MultiSensorConfig(image_height=90, image_width=160, max_points=1000))
    loader = eval_loader(spec, decode, 1, num_workers=2, keys=SHARD_KEYS)
    keys = [k for batch in loader for k in batch["key"]]
    assert len(keys) == len(expected) == 4 and sorted(keys) == sorted(expected)   # nothing lost or duplicated
    assert loader.skipped == 0
    nusc = load_nuscenes(root, "v1.0-mini")
    scene = {s["token"]: s["name"] for s in nusc.scene}
    assert sorted(expected) == sorted(f"{scene[s['scene_token']]}_{s['token']}" for s in nusc.sample)


@needs_cameras
def test_synthetic_geometry_and_sweeps(synthetic_shards):
    """Synthetic samples carry the rig's geometry: box corners project like the devkit's; the second keyframe
    of a scene holds the previous sweep, 0.5 s earlier, moved into its ego frame."""
    from nuscenes.utils.geometry_utils import BoxVisibility, view_points

    from toolkit.bev import box_corners
    from toolkit.camera.geometry import project_ego_points

    root, out, info = synthetic_shards
    nusc = load_nuscenes(root, "v1.0-mini")
    samples = list(wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False))
    lags = set()
    checked = 0
    for sample in samples:
        arrays, meta = read_sample(sample)
        assert meta["image_sizes"] == [[320, 180]] * 6
        lags |= set(np.unique(arrays["points"][:, 5]).round(3))
        index = {t: i for i, t in enumerate(arrays["boxes"]["token"])}
        corners = box_corners(arrays["boxes"])
        for i, cam in enumerate(meta["cameras"]):
            _, boxes, K = nusc.get_sample_data(meta["camera_tokens"][i], box_vis_level=BoxVisibility.ANY)
            for box in boxes:
                ref = view_points(box.corners(), K, normalize=True)[:2].T
                uv, depth = project_ego_points(corners[index[box.token]], arrays["intrinsics"][i],
                                               arrays["cam2keyego"][i])
                np.testing.assert_allclose(uv[depth > 0.1], ref[depth > 0.1], rtol=0, atol=0.5)
                checked += 1
    assert checked > 10
    assert lags == {0.0, 0.5}
    d = decode_multisensor(samples[0], np.random.default_rng(0), MultiSensorConfig())
    assert d["seg"].sum() > 0 and d["center"].max() == 1.0


@needs_cameras
def test_synthetic_corrupt_jpeg_is_skipped_and_counted(synthetic_shards, tmp_path):
    _, out, info = synthetic_shards
    bad = tmp_path / "bad-000000.tar"
    _corrupt_copy(out / info["splits"]["train"]["shards"][0], bad, "truncated")
    loader = eval_loader(str(bad), MultiSensorDecoder(MultiSensorConfig(max_points=0)), 2, keys=SHARD_KEYS)
    keys = [k for batch in loader for k in batch["key"]]
    assert len(keys) == 1 and keys[0].startswith("a_") and loader.skipped == 1


@needs_cameras
def test_synthetic_sweeps_equal_devkit_multisweep(synthetic_shards):
    """Keyframe + previous sweep in the keyframe ego frame = the devkit's ``from_file_multisweep`` (keyframe lidar
    frame, same time lags) moved by the lidar calibration."""
    from nuscenes.utils.data_classes import LidarPointCloud

    from toolkit.camera.geometry import transform_points
    from toolkit.datasets.nuscenes import read_keyframe

    nusc = load_nuscenes(synthetic_shards[0], "v1.0-mini")
    found = []
    for s in nusc.sample:
        kf = read_keyframe(nusc, s["token"], sweeps=3, min_range_m=0.0)
        pc, lag = LidarPointCloud.from_file_multisweep(nusc, s, "LIDAR_TOP", "LIDAR_TOP", nsweeps=4, min_distance=0.0)
        np.testing.assert_allclose(kf.points[:, :3], transform_points(kf.lidar2ego, pc.points[:3].T), rtol=0, atol=1e-4)
        np.testing.assert_array_equal(kf.points[:, 3], pc.points[3])
        np.testing.assert_allclose(kf.points[:, 5], lag[0], rtol=0, atol=1e-6)
        found.append(kf.sweeps)
    assert sorted(found) == [0, 0, 1, 1]   # 2 keyframes per scene: the second has one earlier sweep
