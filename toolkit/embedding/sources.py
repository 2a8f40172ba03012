"""Where camera images come from: multi-sensor shards or a nuScenes dataroot, in a fixed order, and back.

:func:`iter_images` yields ``(record, jpeg bytes)`` for every image of the chosen cameras, in a deterministic
order (shards in the order their spec expands to, samples in tar order, cameras in
:data:`toolkit.datasets.nuscenes.CAMERAS` order; a dataroot's scenes by name, samples in time order), so a
resumed export lines up with the rows already written. A record holds the metadata columns of
:mod:`toolkit.embedding.store` except ``row``. :func:`read_image_bytes` reads a record's image back (the
contact sheets of ``python -m toolkit.search``): from its shard member or its file.

Shard samples are checked by :func:`toolkit.data.multisensor.read_sample` (CRC-32 of every JPEG); a
corrupt sample raises (an export must not silently leave rows out).
"""

from __future__ import annotations

import os
import tarfile
from collections import Counter
from pathlib import Path
from typing import Iterator

from toolkit.datasets.nuscenes import CAMERAS


def check_cameras(cameras: list[str] | None) -> list[str]:
    """The cameras to export (all six if None), in :data:`CAMERAS` order.

    Raises:
        ValueError: naming a camera that is not a nuScenes camera.
    """
    if not cameras:
        return list(CAMERAS)
    bad = [c for c in cameras if c not in CAMERAS]
    if bad:
        raise ValueError(f"--camera {bad[0]} is not a camera; choose from {list(CAMERAS)}")
    return [c for c in CAMERAS if c in cameras]


def sample_class(categories: list[str]) -> str:
    """The most frequent category (first two levels, ``vehicle.car``) of a sample's annotations; ``none`` if
    there are none (ties: alphabetical)."""
    counts = Counter(".".join(str(c).split(".")[:2]) for c in categories)
    if not counts:
        return "none"
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def _tar_samples(path: str) -> Iterator[dict]:
    """Raw samples (``__key__`` + member bytes) of one tar, in tar order (the WebDataset grouping by key)."""
    current: dict = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            if current and current["__key__"] != key:
                yield current
                current = {}
            current["__key__"] = key
            current[ext] = tar.extractfile(member).read()
    if current:
        yield current


def iter_shard_images(spec: str, cameras: list[str]) -> Iterator[tuple[dict, bytes]]:
    """``(record, jpeg)`` of every chosen camera of every sample of multi-sensor shards ``spec``.

    Raises:
        ShardListError: no shard matches; KeyError, ValueError: a sample that is not a multi-sensor sample
            or is corrupt (naming it).
    """
    from toolkit.data.multisensor import camera_key, read_sample
    from toolkit.data.pipeline import expand_shards

    for url in expand_shards(spec):
        path = str(Path(url).resolve())
        for sample in _tar_samples(url):
            arrays, meta = read_sample(sample)
            classes = sample_class(list(arrays["boxes"]["category"]))
            for i, channel in enumerate(meta["cameras"]):
                if channel not in cameras:
                    continue
                w, h = meta["image_sizes"][i]
                record = {"sample_token": meta["sample_token"], "camera": channel,
                          "timestamp_us": int(meta["camera_timestamps_us"][i]), "scene": meta["scene_name"],
                          "class": classes, "source": "shard", "file": path, "key": sample["__key__"],
                          "member": camera_key(channel), "width": int(w), "height": int(h)}
                yield record, arrays["jpegs"][i]


def iter_dataroot_images(dataroot: str, version: str, cameras: list[str]) -> Iterator[tuple[dict, bytes]]:
    """``(record, jpeg)`` of every chosen camera of every keyframe of a nuScenes dataroot (read in place).

    Raises:
        DatarootError: a missing dataroot or table version; FileNotFoundError: a missing image file.
    """
    from toolkit.datasets.nuscenes import iter_samples, load_nuscenes

    nusc = load_nuscenes(dataroot, version)
    for scene, sample in iter_samples(nusc):
        classes = sample_class([nusc.get("sample_annotation", a)["category_name"] for a in sample["anns"]])
        for channel in cameras:
            if channel not in sample["data"]:
                continue
            sd = nusc.get("sample_data", sample["data"][channel])
            path = str(Path(nusc.get_sample_data_path(sd["token"])).resolve())
            record = {"sample_token": sample["token"], "camera": channel, "timestamp_us": int(sd["timestamp"]),
                      "scene": scene["name"], "class": classes, "source": "file", "file": path, "key": "",
                      "member": "", "width": int(sd["width"]), "height": int(sd["height"])}
            yield record, Path(path).read_bytes()


def read_image_bytes(record: dict) -> bytes:
    """The encoded image of a metadata record, from its shard member or its file.

    Raises:
        FileNotFoundError: the shard or file (or the member inside the shard) is gone.
    """
    path = record["file"]
    if not os.path.exists(path):
        raise FileNotFoundError(f"image source '{path}' of {record['sample_token']} {record['camera']} does not exist")
    if record["source"] != "shard":
        return Path(path).read_bytes()
    name = f"{record['key']}.{record['member']}"
    with tarfile.open(path) as tar:
        try:
            return tar.extractfile(tar.getmember(name)).read()
        except KeyError:
            raise FileNotFoundError(f"shard '{path}' has no member '{name}'") from None
