"""Write a synthetic nuScenes dataroot: the v1.0 tables plus LIDAR_TOP ``.pcd.bin`` keyframes and, by
default, six camera JPEGs per keyframe.

The result loads with the official devkit (``NuScenes(version, dataroot)``) exactly like real data,
so the shard builder has one path for both. Each scene is a procedural street
(:mod:`shards.synthetic.world`) driven at 2 Hz keyframes; every sample has one LIDAR_TOP sweep
(:mod:`shards.synthetic.lidar_sweep`: HDL-32E, 32 rings x 1084 columns, float32 ``x, y, z, intensity,
ring`` in firing order) and, with cameras, one JPEG (quality 90) per camera of the nuScenes rig
(:mod:`shards.synthetic.camera_rig`, :mod:`shards.synthetic.camera_render`), each with its own
timestamp and ``ego_pose`` row at its capture time, ``calibrated_sensor`` rows with the intrinsics, and
``prev`` / ``next`` chains per channel.

Annotations (one ``sample_annotation`` per object and sample):

* LiDAR only (``cameras=False``): every vehicle, pedestrian, barrier or cone hit by at least one
  return; ``visibility_token`` is ``"4"`` (not computed).
* with cameras: every object hit by at least one return, or within ``CAMERA_ANNOTATION_RANGE_M`` (60 m,
  horizontally from the ego at the keyframe) and visible in at least one camera pixel, as nuScenes
  annotates what LiDAR or cameras see; ``visibility_token`` is the visible fraction of the object over
  the six cameras binned as nuScenes does (:mod:`shards.synthetic.scene_render`), so a fully occluded
  object with LiDAR returns gets ``"1"``.

``num_lidar_pts`` is the number of returns on the object in the keyframe sweep in both cases.

Output is deterministic given ``seed``: scene ``k`` uses ``numpy.random.default_rng([seed, k])`` for the
street and LiDAR (so the LiDAR sweeps do not depend on ``cameras``), ``[seed, k, 1]`` for its
appearance and camera calibration and ``[seed, k, 2, sample]`` for image noise; tokens are md5 hashes
of descriptive strings. The dataroot is written into a temporary folder and renamed into place at the
end, so an interrupted run never leaves a loadable half-written dataroot; inside it, every sensor file
and table is written atomically too (:mod:`toolkit.files`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from pyquaternion import Quaternion

from toolkit.files import write_bytes

from .appearance import SceneLook, scene_look
from .camera_render import CameraFrame
from .camera_rig import CAMERA_CHANNELS, CameraCalibration, check_image_size, draw_calibration
from .lidar_sweep import Sweep, render_sweep
from .scene_render import ego_to_road, render_cameras, visibility_fraction, visibility_token
from .world import LIDAR_IN_EGO_Q, LIDAR_IN_EGO_T, Street, build_street

KEYFRAME_S = 0.5  # nuScenes keyframes are 2 Hz
LOG_PREFIX = "synth"
CAMERA_ANNOTATION_RANGE_M = 60.0  # objects seen by cameras only are annotated up to this distance
JPEG_QUALITY = 90

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


@dataclass
class SyntheticScene:
    """One scene's world and rig.

    Attributes:
        seed, index: the master seed and scene number it was drawn from.
        street: the world (road frame).
        heading: road -> global rotation about z, rad; offset: (2,) road origin in the global frame, m.
        look: appearance (None without cameras); calibrations: the camera rig ([] without cameras).
    """

    seed: int
    index: int
    street: Street
    heading: float
    offset: np.ndarray
    look: SceneLook | None = None
    calibrations: list[CameraCalibration] = field(default_factory=list)


@dataclass
class SampleRender:
    """The sensor data of one keyframe.

    Attributes:
        k: keyframe number in the scene; t: its time (the LiDAR sweep's end), s.
        sweep: the LIDAR_TOP sweep (``hits_per_object`` = returns per object).
        cameras: one :class:`~shards.synthetic.camera_render.CameraFrame` per calibration (empty without
            cameras) with the image and the object-id / depth buffers.
        camera_ego_poses: (4, 4) ego -> road pose at each camera's capture time.
    """

    k: int
    t: float
    sweep: Sweep
    cameras: list[CameraFrame]
    camera_ego_poses: list[np.ndarray]


def open_scene(seed: int, index: int, n_samples: int, cameras: bool = True,
               image_size: tuple[int, int] = (800, 450)) -> tuple[SyntheticScene, Iterator[SampleRender]]:
    """Build scene ``index`` of ``seed`` and an iterator rendering its keyframes in order, exactly as
    :func:`generate_dataroot` writes them (for checks that need the label buffers, which are not written).

    Args:
        seed, index: master seed and scene number.
        n_samples: keyframes in the scene (sets the street's length; the iterator yields this many).
        cameras: render the six cameras too.
        image_size: ``(width, height)`` of the cameras, px.

    Returns:
        The scene and a generator of :class:`SampleRender` (keyframe 0 first; the LiDAR of keyframe ``k``
        depends on the ones before it, so the keyframes come only in order).

    Raises:
        ValueError: on a bad ``image_size`` or ``n_samples < 1``.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    rng = np.random.default_rng([seed, index])
    street = build_street(rng, route_length=max(1.0, (n_samples - 1) * KEYFRAME_S * 13.0))
    # road frame -> global: a random heading and offset per scene
    scene = SyntheticScene(seed=seed, index=index, street=street, heading=rng.uniform(-np.pi, np.pi),
                           offset=rng.uniform(300, 2000, 2))
    if cameras:
        cam_rng = np.random.default_rng([seed, index, 1])
        scene.look = scene_look(street, cam_rng)
        scene.calibrations = draw_calibration(cam_rng, check_image_size(image_size))

    def samples() -> Iterator[SampleRender]:
        for k in range(n_samples):
            t = k * KEYFRAME_S
            sweep = render_sweep(street, t, rng)
            frames, poses = [], []
            if cameras:
                frames, poses = render_cameras(street, scene.look, scene.calibrations, t, sweep.lidar_pose,
                                               np.random.default_rng([seed, index, 2, k]))
            yield SampleRender(k=k, t=t, sweep=sweep, cameras=frames, camera_ego_poses=poses)

    return scene, samples()


def annotation_labels(street: Street, sample: SampleRender) -> dict[int, tuple[int, str]]:
    """Which objects of a keyframe get a ``sample_annotation``, with their ``num_lidar_pts`` and
    ``visibility_token`` (the rule of the module docstring).

    Returns:
        ``{object index: (LiDAR returns on it, visibility token "1"-"4")}`` in object order.
    """
    hits = sample.sweep.hits_per_object
    if not sample.cameras:
        return {k: (int(hits[k]), "4") for k in range(len(street.objects)) if hits[k] >= 1}
    visible, _projected, fraction = visibility_fraction(sample.cameras)
    ego_xy = ego_to_road(sample.sweep.lidar_pose)[:2, 3]
    out = {}
    for k, obj in enumerate(street.objects):
        seen = visible[k] >= 1 and np.hypot(*(obj.centre_at(sample.t)[:2] - ego_xy)) <= CAMERA_ANNOTATION_RANGE_M
        if hits[k] >= 1 or seen:
            out[k] = (int(hits[k]), visibility_token(fraction[k]))
    return out


def _jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _make_scene(args) -> SceneResult:
    seed, index, n_samples, t0_us, cameras, image_size = args
    scene, samples = open_scene(seed, index, n_samples, cameras=cameras, image_size=image_size)
    street, heading, offset = scene.street, scene.heading, scene.offset
    r_road = Quaternion(axis=[0, 0, 1], angle=heading)

    def to_global(pose_road: np.ndarray) -> tuple[list[float], list[float]]:
        rot = r_road * Quaternion(matrix=pose_road[:3, :3])
        pos = np.array(r_road.rotate(pose_road[:3, 3])) + np.array([*offset, 0.0])
        return list(rot.elements), [float(v) for v in pos]

    log_name = f"{LOG_PREFIX}-{seed:04d}-{index:04d}"
    log_tok, scene_tok = token("log", seed, index), token("scene", seed, index)
    rows: dict[str, list] = {k: [] for k in ["sample", "sample_data", "ego_pose", "sample_annotation", "instance"]}
    files: dict[str, bytes] = {}
    sample_tokens = [token("sample", seed, index, k) for k in range(n_samples)]
    cs_tok = token("calibrated_sensor", seed, index)
    r_lidar_ego = Quaternion(LIDAR_IN_EGO_Q)
    ann_by_obj: dict[int, list[dict]] = {}

    def cam_sd(k: int, channel: str) -> str:
        return token("sample_data", seed, index, k, channel) if 0 <= k < n_samples else ""

    for sample in samples:
        k, t, sweep = sample.k, sample.t, sample.sweep
        ts = t0_us + int(round(t * 1e6))
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
        for cal, frame, ego_cam in zip(scene.calibrations, sample.cameras, sample.camera_ego_poses):
            ts_cam = ts + cal.time_offset_us
            rel_cam = f"samples/{cal.channel}/{log_name}__{cal.channel}__{ts_cam}.jpg"
            files[rel_cam] = _jpeg(frame.image)
            tok = cam_sd(k, cal.channel)
            rotation, translation = to_global(ego_cam)
            rows["ego_pose"].append({"token": tok, "timestamp": ts_cam, "rotation": rotation,
                                     "translation": translation})
            rows["sample_data"].append({
                "token": tok, "sample_token": sample_tokens[k], "ego_pose_token": tok,
                "calibrated_sensor_token": token("calibrated_sensor", seed, index, cal.channel),
                "timestamp": ts_cam, "fileformat": "jpg", "is_key_frame": True, "height": cal.height,
                "width": cal.width, "filename": rel_cam, "prev": cam_sd(k - 1, cal.channel),
                "next": cam_sd(k + 1, cal.channel),
            })
        rows["sample"].append({"token": sample_tokens[k], "timestamp": ts, "scene_token": scene_tok,
                               "prev": sample_tokens[k - 1] if k > 0 else "",
                               "next": sample_tokens[k + 1] if k < n_samples - 1 else ""})
        for obj_id, (n_pts, vis_tok) in annotation_labels(street, sample).items():
            obj = street.objects[obj_id]
            centre = np.array(r_road.rotate(obj.centre_at(t))) + np.array([*offset, 0.0])
            ann_by_obj.setdefault(obj_id, []).append({
                "token": token("ann", seed, index, obj_id, k), "sample_token": sample_tokens[k],
                "instance_token": token("instance", seed, index, obj_id), "visibility_token": vis_tok,
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
    for cal in scene.calibrations:
        rows["calibrated_sensor"].append({
            "token": token("calibrated_sensor", seed, index, cal.channel), "sensor_token": token("sensor", cal.channel),
            "translation": [float(v) for v in cal.translation], "rotation": [float(v) for v in cal.rotation_wxyz],
            "camera_intrinsic": cal.intrinsic.tolist()})
    return SceneResult(index=index, rows=rows, files=files)


def generate_dataroot(out: str | os.PathLike, scenes: int = 8, samples_per_scene: int = 20, seed: int = 0,
                      version: str = "v1.0-mini", workers: int = 1, overwrite: bool = False,
                      progress: bool = True, cameras: bool = True, image_size: tuple[int, int] = (800, 450)) -> Path:
    """Generate a synthetic nuScenes dataroot.

    Args:
        out: dataroot folder to create.
        scenes: number of scenes (streets).
        samples_per_scene: keyframes per scene (2 Hz).
        seed: master seed; the same seed always gives the same bytes.
        version: table folder name (``v1.0-mini``, ``v1.0-trainval``, ...).
        workers: processes rendering scenes in parallel (the result does not depend on it).
        overwrite: replace an existing ``out``.
        progress: show a progress bar.
        cameras: also render the six cameras (JPEG) with their tables and visibility tokens; False
            writes the LiDAR-only dataroot (module docstring).
        image_size: ``(width, height)`` of every camera image, px; the intrinsics are scaled to it.

    Returns:
        The dataroot path.

    Raises:
        FileExistsError: if ``out`` exists and ``overwrite`` is False.
        ValueError: on non-positive counts or a bad ``image_size``.
    """
    out = Path(out)
    if scenes < 1 or samples_per_scene < 1:
        raise ValueError(f"scenes and samples_per_scene must be >= 1, got {scenes} and {samples_per_scene}")
    image_size = check_image_size(image_size)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "samples" / "LIDAR_TOP").mkdir(parents=True)
    for channel in CAMERA_CHANNELS if cameras else ():
        (tmp / "samples" / channel).mkdir()
    (tmp / version).mkdir()
    (tmp / "maps").mkdir()

    jobs = [(seed, i, samples_per_scene, 1_600_000_000_000_000 + (seed * 10_000 + i) * 100_000_000, cameras,
             image_size) for i in range(scenes)]
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
    tables["sensor"] += [{"token": token("sensor", c), "channel": c, "modality": "camera"}
                         for c in (CAMERA_CHANNELS if cameras else ())]
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
    info = {"generator": "shards.synthetic.nuscenes_dataroot", "seed": seed, "scenes": scenes,
            "samples_per_scene": samples_per_scene, "version": version, "sensor": "HDL-32E 32x1084"}
    if cameras:
        info.update(cameras=list(CAMERA_CHANNELS), image_size=list(image_size))
    write_bytes(tmp / "SYNTHETIC.json", json.dumps(info, indent=1).encode())
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
