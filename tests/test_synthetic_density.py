"""Vehicle density of the synthetic nuScenes streets, read back through nuscenes-devkit like real data."""

from __future__ import annotations

import numpy as np
import pytest
from pyquaternion import Quaternion

#: (seed, scenes): the issue's seed 11 plus others, with different scene counts (2 keyframes each, LiDAR only)
CASES = [(11, 2), (0, 3), (3, 2), (7, 1), (19, 2), (23, 3)]


def vehicles_within_50m(dataroot) -> list[int]:
    """Per keyframe: vehicle annotations whose centre is within +-50 m of the ego (ego-frame x and y), the
    square of the nuScenes BEV benchmarks, read with the official devkit."""
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes("v1.0-mini", str(dataroot), verbose=False)
    counts = []
    for sample in nusc.sample:
        pose = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
        to_ego = Quaternion(pose["rotation"]).inverse
        n = 0
        for tok in sample["anns"]:
            ann = nusc.get("sample_annotation", tok)
            if ann["category_name"].startswith("vehicle."):
                x, y, _ = to_ego.rotate(np.asarray(ann["translation"]) - np.asarray(pose["translation"]))
                n += int(abs(x) <= 50 and abs(y) <= 50)
        counts.append(n)
    return counts


@pytest.mark.parametrize("seed,scenes", CASES, ids=[f"seed{s}-scenes{n}" for s, n in CASES])
def test_every_keyframe_has_nuscenes_like_vehicle_density(tmp_path, seed, scenes):
    """nuScenes has about 11 vehicles within 50 m per keyframe; before off-street parking, streets too narrow
    for a kerbside strip had only 2-4 (seed 11: mean 4.3)."""
    from shards.synthetic.nuscenes_dataroot import generate_dataroot

    root = generate_dataroot(tmp_path / "d", scenes=scenes, samples_per_scene=2, seed=seed, progress=False,
                             cameras=False)
    counts = vehicles_within_50m(root)
    assert len(counts) == scenes * 2
    assert np.mean(counts) >= 9, counts
    assert min(counts) >= 5, counts
