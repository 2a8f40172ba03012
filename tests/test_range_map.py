"""Range-map geometry: the exact ring layout and its inverse on the real nuScenes scan, and binning."""

import numpy as np
import pytest

from conftest import REAL_PCD
from toolkit.datasets.nuscenes import read_pcd_bin
from toolkit.lidar.range_map import (is_ring_layout, range_map_from_binning, range_map_from_points,
                                     range_map_from_ring_layout)


def test_real_scan_round_trip_below_1cm(real_dataroot):
    pts = read_pcd_bin(real_dataroot / REAL_PCD)
    assert is_ring_layout(pts, 32)
    rm = range_map_from_ring_layout(pts, 32, min_range_m=1.0)
    assert rm.shape == (32, 1084)
    # every valid point comes back (row 0 = ring 31, column = firing column)
    back = rm.points(valid_only=True)
    grid = pts.reshape(1084, 32, 5)[:, ::-1].transpose(1, 0, 2)
    expected = grid[rm.mask]
    assert len(back) == rm.mask.sum() == 26659  # the note's count of points beyond 1 m
    err = np.linalg.norm(back[:, :3] - expected[:, :3], axis=1)
    assert err.max() < 0.01
    np.testing.assert_array_equal(back[:, 3], expected[:, 3])
    # the ring elevations come out in the HDL-32E's range, highest first
    assert rm.ring_elevation_deg[0] == pytest.approx(10.66, abs=0.1)
    assert rm.ring_elevation_deg[-1] == pytest.approx(-30.61, abs=0.1)
    assert np.all(np.diff(rm.ring_elevation_deg) < 0)


def test_ring_layout_rejects_other_clouds():
    pts = np.random.default_rng(0).normal(size=(64, 5)).astype(np.float32)
    assert not is_ring_layout(pts, 32)
    with pytest.raises(ValueError, match="firing-order"):
        range_map_from_ring_layout(pts, 32)


def test_binning_nearest_return_wins_and_round_trips():
    elev = np.array([10.0, 0.0, -10.0])
    width = 8
    # two points in the same pixel (row 1, column 2): the nearer must win
    az = np.pi - (2.5 / width) * 2 * np.pi
    far = np.array([20 * np.cos(az), 20 * np.sin(az), 0.0, 7.0])
    near = np.array([5 * np.cos(az), 5 * np.sin(az), 0.0, 3.0])
    rm = range_map_from_binning(np.stack([far, near]), elev, width)
    assert rm.mask.sum() == 1 and rm.mask[1, 2]
    assert rm.range_m[1, 2] == pytest.approx(5.0)
    assert rm.intensity[1, 2] == 3.0
    np.testing.assert_allclose(rm.points()[0, :3], near[:3], atol=1e-5)


def test_binning_of_the_real_scan_without_ring(real_dataroot):
    pts = read_pcd_bin(real_dataroot / REAL_PCD)
    exact = range_map_from_points(pts)
    binned = range_map_from_points(pts[:, :4])  # ring column dropped: falls back to binning
    assert binned.layout == "binned" and binned.shape == (32, 1084)
    # binning loses a few points to collisions, never invents any
    assert 0.9 * exact.mask.sum() < binned.mask.sum() <= exact.mask.sum()
