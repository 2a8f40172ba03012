"""Write a synthetic nuScenes dataroot: the v1.0 tables plus LIDAR_TOP ``.pcd.bin`` keyframes.

The result loads with the official devkit (``NuScenes(version, dataroot)``) exactly like real data,
so the shard builder has one path for both. Each scene is a procedural street
(:mod:`shards.synthetic.world`) driven at 2 Hz keyframes; every sample has one LIDAR_TOP sweep
(:mod:`shards.synthetic.lidar_sweep`: HDL-32E, 32 rings x 1084 columns, float32 ``x, y, z, intensity,
ring`` in firing order) and one ``sample_annotation`` per vehicle, pedestrian, barrier or cone hit by
at least one return.

Output is deterministic given ``seed``: scene ``k`` uses ``numpy.random.default_rng([seed, k])`` and
tokens are md5 hashes of descriptive strings. The dataroot is written into a temporary folder and
renamed into place at the end, so an interrupted run never leaves a loadable half-written dataroot;
inside it, every point file and table is written atomically too (:mod:`toolkit.files`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyquaternion import Quaternion

from toolkit.files import write_bytes

from .lidar_sweep import render_sweep
from .world import LIDAR_IN_EGO_Q, LIDAR_IN_EGO_T, build_street

KEYFRAME_S = 0.5  # nuScenes keyframes are 2 Hz
LOG_PREFIX = "synth"

CATEGORIES = {
    "vehicle.car": "Vehicle designed primarily for personal use.",
    "vehicle.truck": "Vehicles primarily designed to haul cargo.",
    "vehicle.bus.rigid": "Rigid bus.",
    "human.pedestrian.adult": "Adult subcategory.",
    "movable_object.barrier": "Temporary road barrier placed to redirect traffic.",
    "movable_object.trafficcone": "All types of traffic cone.",
}
ATTRIBUTES = {
    "vehicle.moving": "Vehicle is moving.",
    "vehicle.parked": "Vehicle is stationary with no driver.",
    "pedestrian.moving": "The human is moving.",
    "pedestrian.standing": "The human is standing.",
}
VISIBILITY = [("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100")]


def token(*parts) -> str:
    """Deterministic 32-hex token from descriptive parts."""
    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


@dataclass
class SceneResult:
    """Tables rows and files of one generated scene (built in a worker process)."""

    index: int
    rows: dict
    files: dict  # relative path -> bytes


def _quat_yaw(yaw: float) -> list[float]:
    return list(Quaternion(axis=[0, 0, 1], angle=yaw).elements)


def _make_scene(args) -> SceneResult:
    seed, index, n_samples, t0_us = args
    rng = np.random.default_rng([seed, index])
    street = build_street(rng, route_length=max(1.0, (n_samples - 1) * KEYFRAME_S * 13.0))
    # road frame -> global: a random heading and offset per scene
    heading = rng.uniform(-np.pi, np.pi)
    offset = rng.uniform(300, 2000, 2)
    r_road = Quaternion(axis=[0, 0, 1], angle=heading)

    log_name = f"{LOG_PREFIX}-{seed:04d}-{index:04d}"
    log_tok, scene_tok = token("log", seed, index), token("scene", seed, index)
    rows: dict[str, list] = {k: [] for k in ["sample", "sample_data", "ego_pose", "sample_annotation", "instance"]}
    files: dict[str, bytes] = {}
    sample_tokens = [token("sample", seed, index, k) for k in range(n_samples)]
    cs_tok = token("calibrated_sensor", seed, index)
    r_lidar_ego = Quaternion(LIDAR_IN_EGO_Q)
    ann_by_obj: dict[int, list[dict]] = {}

    for k in range(n_samples):
        t = k * KEYFRAME_S
        ts = t0_us + int(round(t * 1e6))
        sweep = render_sweep(street, t, rng)
        rel = f"samples/LIDAR_TOP/{log_name}__LIDAR_TOP__{ts}.pcd.bin"
        files[rel] = sweep.points.astype(np.float32).tobytes()

        # ego pose: lidar pose (road frame) composed with the fixed mounting, then road -> global
        lidar_rot = Quaternion(matrix=sweep.lidar_pose[:3, :3])
        ego_rot_road = lidar_rot * r_lidar_ego.inverse
        ego_pos_road = sweep.lidar_pose[:3, 3] - ego_rot_road.rotate(LIDAR_IN_EGO_T)
        ego_rot = r_road * ego_rot_road
        ego_pos = np.array(r_road.rotate(ego_pos_road)) + np.array([*offset, 0.0])
        sd_tok = token("sample_data", seed, index, k)
        rows["ego_pose"].append({"token": sd_tok, "timestamp": ts, "rotation": list(ego_rot.elements),
                                 "translation": [float(v) for v in ego_pos]})
        rows["sample_data"].append({
            "token": sd_tok, "sample_token": sample_tokens[k], "ego_pose_token": sd_tok,
            "calibrated_sensor_token": cs_tok, "timestamp": ts, "fileformat": "pcd", "is_key_frame": True,
            "height": 0, "width": 0, "filename": rel,
            "prev": token("sample_data", seed, index, k - 1) if k > 0 else "",
            "next": token("sample_data", seed, index, k + 1) if k < n_samples - 1 else "",
        })
        rows["sample"].append({"token": sample_tokens[k], "timestamp": ts, "scene_token": scene_tok,
                               "prev": sample_tokens[k - 1] if k > 0 else "",
                               "next": sample_tokens[k + 1] if k < n_samples - 1 else ""})
        for obj_id, obj in enumerate(street.objects):
            n_pts = int(sweep.hits_per_object[obj_id])
            if n_pts < 1:
                continue
            centre = np.array(r_road.rotate(obj.centre_at(t))) + np.array([*offset, 0.0])
            ann_by_obj.setdefault(obj_id, []).append({
                "token": token("ann", seed, index, obj_id, k), "sample_token": sample_tokens[k],
                "instance_token": token("instance", seed, index, obj_id), "visibility_token": "4",
                "attribute_tokens": [token("attribute", obj.attribute)] if obj.attribute else [],
                "translation": [float(v) for v in centre],
                "size": [float(obj.size[1]), float(obj.size[0]), float(obj.size[2])],  # nuScenes w, l, h
                "rotation": _quat_yaw(heading + obj.yaw), "prev": "", "next": "",
                "num_lidar_pts": n_pts, "num_radar_pts": 0,
            })

    for obj_id, anns in ann_by_obj.items():
        for a, b in zip(anns[:-1], anns[1:]):
            a["next"], b["prev"] = b["token"], a["token"]
        rows["sample_annotation"].extend(anns)
        rows["instance"].append({
            "token": token("instance", seed, index, obj_id),
            "category_token": token("category", street.objects[obj_id].category),
            "nbr_annotations": len(anns), "first_annotation_token": anns[0]["token"],
            "last_annotation_token": anns[-1]["token"],
        })
    rows["scene"] = [{"token": scene_tok, "log_token": log_tok, "nbr_samples": n_samples,
                      "first_sample_token": sample_tokens[0], "last_sample_token": sample_tokens[-1],
                      "name": f"scene-synth-{seed:04d}-{index:04d}",
                      "description": f"synthetic street, ego {street.ego_speed:.1f} m/s, "
                                     f"{len(street.objects)} objects"}]
    rows["log"] = [{"token": log_tok, "logfile": log_name, "vehicle": "synth", "date_captured": "2026-01-01",
                    "location": "synthetic"}]
    rows["calibrated_sensor"] = [{"token": cs_tok, "sensor_token": token("sensor", "LIDAR_TOP"),
                                  "translation": list(LIDAR_IN_EGO_T), "rotation": list(LIDAR_IN_EGO_Q),
                                  "camera_intrinsic": []}]
    return SceneResult(index=index, rows=rows, files=files)


def generate_dataroot(out: str | os.PathLike, scenes: int = 8, samples_per_scene: int = 20, seed: int = 0,
                      version: str = "v1.0-mini", workers: int = 1, overwrite: bool = False,
                      progress: bool = True) -> Path:
    """Generate a synthetic nuScenes dataroot.

    Args:
        out: dataroot folder to create.
        scenes: number of scenes (streets).
        samples_per_scene: keyframes per scene (2 Hz).
        seed: master seed; the same seed always gives the same bytes.
        version: table folder name (``v1.0-mini``, ``v1.0-trainval``, ...).
        workers: processes rendering scenes in parallel (the result does not depend on it).
        overwrite: replace an existing ``out``.

    Returns:
        The dataroot path.

    Raises:
        FileExistsError: if ``out`` exists and ``overwrite`` is False.
        ValueError: on non-positive counts.
    """
    out = Path(out)
    if scenes < 1 or samples_per_scene < 1:
        raise ValueError(f"scenes and samples_per_scene must be >= 1, got {scenes} and {samples_per_scene}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "samples" / "LIDAR_TOP").mkdir(parents=True)
    (tmp / version).mkdir()
    (tmp / "maps").mkdir()

    jobs = [(seed, i, samples_per_scene, 1_600_000_000_000_000 + (seed * 10_000 + i) * 100_000_000)
            for i in range(scenes)]
    tables: dict[str, list] = {k: [] for k in ["scene", "log", "sample", "sample_data", "ego_pose",
                                               "sample_annotation", "instance", "calibrated_sensor"]}
    from tqdm import tqdm

    bar = tqdm(total=scenes, desc="synthetic scenes", unit="scene", disable=not progress)
    executor = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        results = executor.map(_make_scene, jobs) if executor else map(_make_scene, jobs)
        for res in results:
            for rel, data in res.files.items():
                write_bytes(tmp / rel, data)
            for name, rows in res.rows.items():
                tables[name].extend(rows)
            bar.update()
    finally:
        bar.close()
        if executor:
            executor.shutdown()

    tables["sensor"] = [{"token": token("sensor", "LIDAR_TOP"), "channel": "LIDAR_TOP", "modality": "lidar"}]
    tables["category"] = [{"token": token("category", n), "name": n, "description": d}
                          for n, d in CATEGORIES.items()]
    tables["attribute"] = [{"token": token("attribute", n), "name": n, "description": d}
                           for n, d in ATTRIBUTES.items()]
    tables["visibility"] = [{"token": t, "level": lvl, "description": f"visibility of whole object is {lvl}"}
                            for t, lvl in VISIBILITY]
    map_file = "maps/synthetic-blank.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp / map_file)
    tables["map"] = [{"token": token("map", seed), "category": "semantic_prior", "filename": map_file,
                      "log_tokens": [row["token"] for row in tables["log"]]}]
    for name, rows in tables.items():
        write_bytes(tmp / version / f"{name}.json", json.dumps(rows, indent=0).encode())
    (tmp / "SYNTHETIC.json").write_text(json.dumps({
        "generator": "shards.synthetic.nuscenes_dataroot", "seed": seed, "scenes": scenes,
        "samples_per_scene": samples_per_scene, "version": version, "sensor": "HDL-32E 32x1084"}, indent=1))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
