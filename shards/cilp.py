"""CILP folder layout (synthetic, or the real cubes-and-spheres download) -> WebDataset shards.

Input: ``ROOT/{cubes,spheres}/{rgb/NNNN.png, lidar/NNNN.npy, azimuth.npy, zenith.npy}`` (written by
:mod:`shards.synthetic.cilp`), read by :func:`toolkit.datasets.cilp_layout.scan_cilp_folder`, which
documents the layout. Output: ``train-*.tar`` and ``val-*.tar`` plus ``info.json``; one sample per
(RGB, LiDAR) pair with the original file bytes unchanged:

========== ====================================================================================
key        content
========== ====================================================================================
rgb.png    the RGBA PNG as stored
lidar.npy  the (64, 64) float32 range image as stored (rows azimuth, columns zenith, metres)
azimuth.npy, zenith.npy  the class folder's beam angles, rad
cls        label as ASCII: 0 = cubes, 1 = spheres
json       ``{"class", "index", "rgb", "lidar", "split", "split_seed", "val_fraction"}``
========== ====================================================================================

The split is stratified by class and drawn with ``seed``; samples are shuffled (same seed) before
writing, so every shard mixes both classes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from toolkit.datasets.cilp_layout import CLASSES, scan_cilp_folder

from .writer import AtomicShardWriter, brace_pattern, write_info


def split_items(items: list[dict], val_fraction: float, seed: int) -> dict[str, list[dict]]:
    """Stratified split: round(val_fraction * n_class) samples of each class go to val."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    rng = random.Random(seed)
    out = {"train": [], "val": []}
    for cls in CLASSES:
        group = [it for it in items if it["class"] == cls]
        n_val = round(len(group) * val_fraction)
        val_ids = set(id(it) for it in rng.sample(group, n_val))
        for it in group:
            out["val" if id(it) in val_ids else "train"].append(it)
    for split in out.values():
        rng.shuffle(split)
    return out


def build_cilp_shards(root: str, out: str, val_fraction: float = 0.2, seed: int = 0, maxcount: int = 1000,
                      maxsize: float = 1e9, progress: bool = True) -> dict:
    """Write the shards; returns the ``info.json`` content (patterns, counts per split and class)."""
    from tqdm import tqdm

    items = scan_cilp_folder(root)
    splits = split_items(items, val_fraction, seed)
    info = {"source": str(Path(root).resolve()), "format": "shards.cilp", "classes": list(CLASSES),
            "split_seed": seed, "val_fraction": val_fraction, "splits": {}}
    angle_bytes: dict[Path, bytes] = {}
    for name, group in splits.items():
        if not group:
            continue
        with AtomicShardWriter(out, name, maxcount=maxcount, maxsize=maxsize) as writer:
            for it in tqdm(group, desc=f"{name} pairs", disable=not progress):
                for key in ("azimuth", "zenith"):
                    angle_bytes.setdefault(it[key], it[key].read_bytes())
                meta = {"class": it["class"], "index": it["index"], "rgb": f"{it['class']}/rgb/{it['rgb'].name}",
                        "lidar": f"{it['class']}/lidar/{it['lidar'].name}", "split": name, "split_seed": seed,
                        "val_fraction": val_fraction}
                writer.write({"__key__": f"{it['class']}_{it['stem']}", "rgb.png": it["rgb"].read_bytes(),
                              "lidar.npy": it["lidar"].read_bytes(), "azimuth.npy": angle_bytes[it["azimuth"]],
                              "zenith.npy": angle_bytes[it["zenith"]], "cls": str(it["label"]).encode(),
                              "json": json.dumps(meta).encode()})
        info["splits"][name] = {"shards": writer.shards, "samples_per_shard": writer.counts,
                                "samples": sum(writer.counts),
                                "per_class": {c: sum(1 for it in group if it["class"] == c) for c in CLASSES},
                                "pattern": str(Path(out) / brace_pattern(name, len(writer.shards)))}
    write_info(out, info)
    return info
