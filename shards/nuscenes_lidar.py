"""nuScenes LIDAR_TOP keyframes -> range-map WebDataset shards (one sample per scan).

Reads any devkit dataroot (real nuScenes, ``shared/data/nuscenes-real-1sample``, or the synthetic
dataroot of :mod:`shards.synthetic.nuscenes_dataroot`). Scans with a ring index in firing order get
the exact 32 x W layout; others are binned by elevation/azimuth (:mod:`toolkit.lidar.range_map`).
Scenes can be held out for validation: ``val_fraction`` of the scenes, chosen by ``seed``, go to
``val-*.tar``; the rest to ``train-*.tar``. ``info.json`` records both lists.
"""

from __future__ import annotations

import random
from pathlib import Path

from toolkit.datasets.nuscenes import iter_lidar_frames, load_nuscenes
from toolkit.lidar.range_map import range_map_from_points
from toolkit.lidar.shard_format import encode_sample

from .writer import AtomicShardWriter, brace_pattern, write_info


def split_scenes(names: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic scene-level split: (train scene names, val scene names), each sorted."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    names = sorted(names)
    n_val = max(1, round(len(names) * val_fraction)) if val_fraction > 0 else 0
    if n_val >= len(names) and names:
        n_val = len(names) - 1
    val = sorted(random.Random(seed).sample(names, n_val))
    return [n for n in names if n not in set(val)], val


def build_nuscenes_lidar_shards(dataroot: str, version: str, out: str, split: str | None = None,
                                val_fraction: float = 0.0, seed: int = 0, maxcount: int = 1000,
                                maxsize: float = 1e9, n_rings: int = 32, min_range_m: float = 1.0,
                                max_range_m: float = 200.0, progress: bool = True) -> dict:
    """Write range-map shards for the LIDAR_TOP keyframes of a dataroot.

    Args:
        dataroot, version: the devkit dataroot and table version (``v1.0-mini``, ...).
        out: output folder for ``train-*.tar``, ``val-*.tar`` and ``info.json``.
        split: an official nuScenes split name (``mini_train``, ``train``, ``val``, ...) restricting the
            scenes (``nuscenes.utils.splits.create_splits_scenes``); None = every scene.
        val_fraction: fraction of the selected scenes held out into ``val-*.tar``.
        maxcount, maxsize: per-shard limits (samples, bytes).
        min_range_m, max_range_m: interval of the stored validity mask.

    Returns:
        The ``info.json`` content: shard names, brace patterns, sample counts per split.

    Raises:
        DatarootError: missing dataroot or version; KeyError: unknown split name.
    """
    nusc = load_nuscenes(dataroot, version)
    scenes = sorted(s["name"] for s in nusc.scene)
    if split:
        from nuscenes.utils.splits import create_splits_scenes

        splits = create_splits_scenes(verbose=False)
        if split not in splits:
            raise KeyError(f"unknown --split '{split}'; choose from {sorted(splits)}")
        wanted = set(splits[split])
        scenes = [s for s in scenes if s in wanted]
    train_scenes, val_scenes = split_scenes(scenes, val_fraction, seed)
    info: dict = {"source": {"dataroot": str(Path(dataroot).resolve()), "version": version, "split": split,
                             "val_fraction": val_fraction, "seed": seed},
                  "format": "toolkit.lidar.shard_format", "min_range_m": min_range_m, "max_range_m": max_range_m,
                  "splits": {}}
    from tqdm import tqdm

    for name, names in (("train", train_scenes), ("val", val_scenes)):
        if not names:
            continue
        with AtomicShardWriter(out, name, maxcount=maxcount, maxsize=maxsize) as writer:
            frames = iter_lidar_frames(nusc, names)
            for frame in tqdm(frames, desc=f"{name} scans", unit="scan", disable=not progress):
                rm = range_map_from_points(frame.points, n_rings=n_rings, min_range_m=min_range_m,
                                           max_range_m=max_range_m)
                meta = {"sample_token": frame.sample_token, "sample_data_token": frame.sample_data_token,
                        "timestamp_us": frame.timestamp_us, "scene_name": frame.scene_name,
                        "source": f"{version}:{Path(frame.path).name}"}
                writer.write(encode_sample(f"{frame.scene_name}_{frame.sample_token}", rm, meta))
        info["splits"][name] = {"shards": writer.shards, "samples_per_shard": writer.counts,
                                "samples": sum(writer.counts), "scenes": names,
                                "pattern": str(Path(out) / brace_pattern(name, len(writer.shards)))}
    write_info(out, info)
    return info
