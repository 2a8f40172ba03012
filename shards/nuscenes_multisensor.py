"""nuScenes keyframes -> multi-sensor WebDataset shards: six camera images, LiDAR points and boxes per sample.

Reads any devkit dataroot (real nuScenes, ``shared/data/nuscenes-real-1sample``, or a synthetic dataroot of
:mod:`shards.synthetic.nuscenes_dataroot` with cameras) through
:func:`toolkit.datasets.nuscenes.iter_keyframes`; the sample format is :mod:`toolkit.data.multisensor`.

Splits: ``splits`` names official nuScenes splits (``train``, ``val``, ``mini_train``, ...; devkit
``create_splits_scenes``), each written as ``<split>-*.tar`` with the dataroot's scenes of that split; or
``val_fraction`` holds out that fraction of the scenes (chosen by ``seed``,
:func:`shards.nuscenes_lidar.split_scenes`) into ``val-*.tar``, the rest in ``train-*.tar``. Shards are
written atomically (:class:`shards.writer.AtomicShardWriter`); ``info.json`` records the scenes, counts and
settings.
"""

from __future__ import annotations

from pathlib import Path

from toolkit.data.multisensor import FORMAT, SHARD_KEYS, encode_keyframe
from toolkit.datasets.nuscenes import CAMERAS, iter_keyframes, load_nuscenes, official_split_scenes

from .nuscenes_lidar import split_scenes
from .writer import AtomicShardWriter, brace_pattern, write_info


def build_nuscenes_multisensor_shards(dataroot: str, version: str, out: str, splits: list[str] | None = None,
                                      val_fraction: float = 0.0, seed: int = 0,
                                      image_size: tuple[int, int] | None = None, sweeps: int = 0,
                                      min_range_m: float = 1.0, jpeg_quality: int = 90, maxcount: int = 100,
                                      maxsize: float = 1e9, progress: bool = True) -> dict:
    """Write one multi-sensor sample per keyframe of a dataroot.

    Args:
        dataroot, version: the devkit dataroot and table version.
        out: output folder for ``<split>-*.tar`` and ``info.json``.
        splits: official split names, one shard set each (a split none of whose scenes is in the dataroot is
            left out and listed in ``info["empty_splits"]``); None = by ``val_fraction``.
        val_fraction: fraction of scenes held out to ``val-*.tar`` (only without ``splits``).
        seed: the seed of that scene choice.
        image_size: ``(width, height)`` to resize images to (JPEG re-encoded at ``jpeg_quality``, intrinsics
            rescaled); None stores the original files byte for byte.
        sweeps: previous LiDAR sweeps per sample (points then get a ``time_lag`` column).
        min_range_m: points nearer than this to their sensor are dropped, m.
        maxcount, maxsize: per-shard limits (samples, bytes; a nuScenes sample is ~1.6 MB at full size).

    Returns:
        The ``info.json`` content.

    Raises:
        DatarootError: missing dataroot or version; KeyError: unknown split name; ValueError: bad settings,
        both ``splits`` and ``val_fraction``, or splits none of whose scenes is in the dataroot.
    """
    if splits and val_fraction:
        raise ValueError("give either --split or --val-fraction, not both")
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
        raise ValueError(f"--image-size must be WIDTHxHEIGHT > 0, got {image_size}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"--jpeg-quality must be in [1, 100], got {jpeg_quality}")
    nusc = load_nuscenes(dataroot, version)
    scenes = sorted(s["name"] for s in nusc.scene)
    if splits:
        plan = {}
        for name in splits:
            wanted = set(official_split_scenes(name))
            plan[name] = [s for s in scenes if s in wanted]
        if not any(plan.values()):
            raise ValueError(f"--split {','.join(splits)}: none of its scenes is in {dataroot} ({version})")
    else:
        train, val = split_scenes(scenes, val_fraction, seed)
        plan = {"train": train, "val": val}
    info: dict = {"format": FORMAT, "keys": list(SHARD_KEYS), "cameras": list(CAMERAS),
                  "source": {"dataroot": str(Path(dataroot).resolve()), "version": version, "splits": splits,
                             "val_fraction": val_fraction, "seed": seed},
                  "image_size": list(image_size) if image_size else None, "sweeps": sweeps,
                  "min_range_m": min_range_m, "jpeg_quality": jpeg_quality if image_size else None, "splits": {},
                  "empty_splits": [name for name, names in plan.items() if not names]}
    from tqdm import tqdm

    for name, names in plan.items():
        if not names:
            continue
        with AtomicShardWriter(out, name, maxcount=maxcount, maxsize=maxsize) as writer:
            frames = iter_keyframes(nusc, names, cameras=CAMERAS, sweeps=sweeps, min_range_m=min_range_m)
            for kf in tqdm(frames, desc=f"{name} keyframes", unit="sample", disable=not progress):
                writer.write(encode_keyframe(kf, image_size, jpeg_quality))
        info["splits"][name] = {"shards": writer.shards, "samples_per_shard": writer.counts,
                                "samples": sum(writer.counts), "scenes": names,
                                "pattern": str(Path(out) / brace_pattern(name, len(writer.shards)))}
    write_info(out, info)
    return info
