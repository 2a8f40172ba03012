"""BEV grid and targets: the index convention, cell-centre inclusion, offsets, centre heat map, valid mask, and
the real nuScenes keyframe's vehicle footprints (through the shard builder and decode) against the devkit's."""

import numpy as np
import pytest
import shapely
import webdataset as wds
from pyquaternion import Quaternion

from toolkit.bev import BEVGrid, bev_targets, box_corners, box_footprints, make_boxes
from toolkit.data.multisensor import MultiSensorConfig, decode_multisensor
from toolkit.datasets.nuscenes import load_nuscenes


def _one(center, size=(2.0, 4.0, 1.5), yaw=0.0, **fields):
    return make_boxes([center], [size], yaw=[yaw], **{k: [v] for k, v in fields.items()})


def test_grid_convention():
    g = BEVGrid()
    assert g.shape == (200, 200)
    centres = g.cell_centers()
    np.testing.assert_allclose(centres[0, 0], [-49.75, -49.75])    # row 0 = rear (x min), column 0 = right (y min)
    np.testing.assert_allclose(centres[199, 0], [49.75, -49.75])   # last row = front
    np.testing.assert_allclose(centres[0, 199], [-49.75, 49.75])   # last column = left
    np.testing.assert_allclose(g.ego_to_index([[20.25, 10.25]]), [[140.0, 120.0]])
    np.testing.assert_allclose(g.index_to_ego(g.ego_to_index([[3.3, -7.1]])), [[3.3, -7.1]])
    vox = g.voxel_centers()
    assert vox.shape == (8, 200, 200, 3)
    np.testing.assert_allclose(vox[:, 0, 0, 2], np.arange(8) - 4.5)   # level 0 lowest, 1 m levels in [-5, 3]
    # a car ahead-left is drawn in the rows of +x and the columns of +y
    seg = bev_targets(_one([20.0, 10.0, 0.0]), g)["seg"][0]
    rows, cols = np.nonzero(seg)
    assert rows.min() > 100 and cols.min() > 100
    assert BEVGrid(resolution=0.25, x_bounds=(-30, 30), y_bounds=(-20, 20)).shape == (240, 160)


def test_seg_is_cell_centres_strictly_inside():
    g = BEVGrid()
    # x in [9, 11] (cell edges), y in [4.5, 5.5]: centres 9.25..10.75 x 4.75, 5.25 -> 4 x 2 cells
    cases = [((1.0, 2.0), 0.0, (4, 2)), ((1.0, 2.1), 0.0, (4, 2)), ((1.0, 2.6), 0.0, (6, 2)),
             ((1.0, 2.0), np.pi / 2, (2, 4))]
    for (w, l), yaw, (n_rows, n_cols) in cases:
        t = bev_targets(_one([10.0, 5.0, 0.0], (w, l, 1.5), yaw), g)
        rows, cols = np.nonzero(t["seg"][0])
        assert (len(np.unique(rows)), len(np.unique(cols)), len(rows)) == (n_rows, n_cols, n_rows * n_cols), (w, l, yaw)
        centres = g.cell_centers()[rows, cols]
        assert np.all(np.abs(centres[:, 0] - 10.0) < (l if yaw == 0 else w) / 2)
    # a cell centre exactly on an edge is out: x in [9.25, 10.75] keeps 9.75 and 10.25 only
    rows, _ = np.nonzero(bev_targets(_one([10.0, 5.0, 0.0], (1.0, 1.5, 1.5)), g)["seg"][0])
    assert sorted(set(rows)) == [119, 120]
    # a box off the grid draws nothing
    assert bev_targets(_one([80.0, 0.0, 0.0]), g)["seg"].sum() == 0


def test_offsets_point_to_centres():
    g = BEVGrid()
    boxes = make_boxes([[10.1, -3.3, 0.2], [-20.4, 7.9, 0.0]], [[1.9, 4.6, 1.5], [2.5, 9.0, 3.0]], yaw=[0.4, -1.2])
    t = bev_targets(boxes, g)
    assert t["offset"].shape == (2, 200, 200) and t["offset"].dtype == np.float32
    centres = g.ego_to_index(boxes["center"])
    for k in (0, 1):
        r, c = np.nonzero(t["instance"] == k + 1)
        assert len(r) > 20
        target = np.stack([r, c], 1) + t["offset"][:, r, c].T       # cell + offset = the exact centre
        np.testing.assert_allclose(target, np.broadcast_to(centres[k], target.shape), atol=1e-4)
        # the sign: cells behind the centre (smaller row) point forward (+row), cells to its right (+col) ...
        np.testing.assert_array_equal(np.sign(t["offset"][0, r, c]), np.sign(centres[k, 0] - r))
        np.testing.assert_array_equal(np.sign(t["offset"][1, r, c]), np.sign(centres[k, 1] - c))
        np.testing.assert_allclose(g.index_to_ego(target[:1]), boxes["center"][k:k + 1, :2], atol=1e-4)
    assert np.all(t["offset"][:, t["seg"][0] == 0] == 0)
    assert np.abs(t["offset"]).max() < 10  # cells, not doubled (a 9 m truck: at most ~4.6 m = 9.3 cells)


def test_center_heat_map():
    g = BEVGrid()
    t = bev_targets(_one([10.1, -3.3, 0.0]), g, sigma_cells=2.0)
    heat = t["center"][0]
    peak = np.floor(g.ego_to_index([[10.1, -3.3]])[0] + 0.5).astype(int)   # the cell holding the centre
    assert heat.max() == 1.0 and heat[tuple(peak)] == 1.0 and (heat == 1.0).sum() == 1
    np.testing.assert_allclose(heat[peak[0] + 1, peak[1]], np.exp(-1 / (2 * 2.0 ** 2)), rtol=1e-6)
    np.testing.assert_allclose(heat[peak[0] + 3, peak[1] - 2], np.exp(-13 / 8), rtol=1e-6)
    assert heat.min() == 0 and heat[heat > 0].min() >= 1e-3   # tails below 1e-3 are cut (Simple-BEV)
    # two instances: the max, not the sum, and one peak each
    t2 = bev_targets(make_boxes([[10.1, -3.3, 0], [11.6, -3.3, 0]], [[2, 4, 1.5]] * 2), g)
    assert t2["center"].max() == 1.0 and (t2["center"] == 1.0).sum() == 2


def test_valid_is_zero_inside_low_visibility_boxes():
    g = BEVGrid()
    boxes = make_boxes([[10.0, 5.0, 0], [-15.0, -8.0, 0]], [[2, 4.5, 1.5]] * 2, visibility=[1, 4])
    t = bev_targets(boxes, g)
    seg, valid, inst = t["seg"][0], t["valid"][0], t["instance"]
    assert np.array_equal(valid == 0, inst == 1)           # exactly the bin-1 box's cells
    assert seg[inst == 1].all() and seg[inst == 2].all()   # still drawn in seg (Simple-BEV)
    assert bev_targets(boxes, g, ignore_visibility=())["valid"].min() == 1


def test_category_filter_and_errors():
    boxes = make_boxes([[10.0, 5.0, 0], [-15.0, -8.0, 0]], [[0.7, 0.7, 1.8], [2, 4.5, 1.5]],
                       category=["human.pedestrian.adult", "vehicle.truck"])
    t = bev_targets(boxes)
    assert set(np.unique(t["instance"])) == {0, 1}   # the truck only, as instance 1
    assert bev_targets(boxes, categories=("human.",))["seg"].sum() > 0
    assert bev_targets(make_boxes(np.zeros((0, 3)), np.zeros((0, 3))))["seg"].sum() == 0
    with pytest.raises(ValueError, match="sigma_cells"):
        bev_targets(boxes, sigma_cells=0)
    with pytest.raises(ValueError, match="sequence of prefixes"):
        bev_targets(boxes, categories="vehicle.")
    with pytest.raises(ValueError, match="whole number"):
        BEVGrid(x_bounds=(-50, 50.2))
    with pytest.raises(ValueError, match="max > min"):
        BEVGrid(y_bounds=(5, -5))
    with pytest.raises(ValueError, match="size"):
        make_boxes([[0, 0, 0]], [[0, 4, 1]])


def test_footprints_and_corners_agree():
    boxes = make_boxes([[3.0, -2.0, 0.8]], [[1.8, 4.4, 1.6]], yaw=[0.7])
    corners = box_corners(boxes)[0]
    # front-left, front-right, rear-right, rear-left = the devkit's bottom corners 3, 2, 6, 7
    np.testing.assert_allclose(box_footprints(boxes)[0], corners[[3, 2, 6, 7], :2])
    np.testing.assert_allclose(corners.mean(0), boxes["center"][0])


@pytest.fixture(scope="module")
def real_sample(real_dataroot, tmp_path_factory):
    from shards.nuscenes_multisensor import build_nuscenes_multisensor_shards

    out = tmp_path_factory.mktemp("real_ms")
    info = build_nuscenes_multisensor_shards(str(real_dataroot), "v1.0-mini", str(out), splits=["mini_train"],
                                             progress=False)
    return next(iter(wds.WebDataset(info["splits"]["mini_train"]["pattern"], shardshuffle=False)))


def test_real_seg_covers_devkit_vehicle_footprints(real_dataroot, real_sample):
    """The decoded seg target against shapely polygons of the devkit's ``box.bottom_corners()`` (moved into the
    keyframe ego frame by the devkit's own Box methods), rasterised on a 4x finer grid (0.125 m) and then
    downsampled fairly: a 0.5 m cell is in the reference when at least half of its 16 fine cells are."""
    nusc = load_nuscenes(real_dataroot, "v1.0-mini")
    sample = nusc.sample[0]
    pose = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
    fine = BEVGrid(resolution=0.125)
    xy = fine.cell_centers().reshape(-1, 2)
    ref = np.zeros(len(xy), bool)
    vehicles = 0
    for ann in sample["anns"]:
        box = nusc.get_box(ann)
        if not box.name.startswith("vehicle."):
            continue
        box.translate(-np.array(pose["translation"]))
        box.rotate(Quaternion(pose["rotation"]).inverse)
        ref |= shapely.contains_xy(shapely.Polygon(box.bottom_corners()[:2].T), xy[:, 0], xy[:, 1])
        vehicles += 1
    ref_coarse = ref.reshape(200, 4, 200, 4).mean(axis=(1, 3)) >= 0.5
    seg = decode_multisensor(real_sample, np.random.default_rng(0), MultiSensorConfig(max_points=0))["seg"][0] > 0
    iou = (seg & ref_coarse).sum() / (seg | ref_coarse).sum()
    assert vehicles == 13 and ref_coarse.sum() > 250
    assert iou >= 0.9, iou   # 0.960
    # at the fine resolution the 0.5 m cells' own quantisation bounds the IoU (0.855 here); areas agree to 5 %
    seg_fine = np.kron(seg, np.ones((4, 4), bool))
    assert (seg_fine & ref.reshape(800, 800)).sum() / (seg_fine | ref.reshape(800, 800)).sum() > 0.8
    assert abs(seg.sum() - ref.sum() / 16) < 0.05 * seg.sum()
