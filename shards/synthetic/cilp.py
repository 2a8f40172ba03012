"""Synthetic cubes-and-spheres RGB + LiDAR pairs in the CILP assessment's folder layout and formats.

Layout (as the NVIDIA DLI / CILP data, ``shared/notes/cilp-fusion-embedding.md`` section 1)::

    ROOT/{cubes,spheres}/rgb/NNNN.png     RGBA, 64 x 64, uint8
    ROOT/{cubes,spheres}/lidar/NNNN.npy   float32 (64, 64) range image: rows = azimuth beams,
                                          columns = zenith beams, metres; a miss is MAX_RANGE
    ROOT/{cubes,spheres}/azimuth.npy      float32 (64,) beam azimuths, rad
    ROOT/{cubes,spheres}/zenith.npy       float32 (64,) beam zeniths, rad

Each sample is one scene: a cube (random size and rotation) or a sphere (random radius) resting on a
ground plane, random colours, lighting, shadows and sky. A camera and a LiDAR share one pose. With
``pose="fixed"`` (default, like the DLI data: one sensor, objects placed near the origin) the sensor
stands at FIXED_EYE looking at FIXED_TARGET and the object moves within +-0.8 m across and +-1.5 m along
the view; with ``pose="random"`` the sensor looks at the object from a random distance, height and
bearing, which gives the contrastive task easy pose cues (horizon, ground gradient) to match. The image is ray-traced per pixel (Lambert
shading, ambient light, a hard shadow), the range image by casting the LiDAR's 64 x 64 beams at the same
scene. Beam directions in the sensor frame follow the CILP convention
``d = (sin(-az) cos(-ze), cos(-az) cos(-ze), sin(-ze))`` (the sensor looks along +y).
Deterministic: sample ``i`` of class ``c`` uses ``numpy.random.default_rng([seed, c, i])``.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

CLASSES = ("cubes", "spheres")
SIZE = 64
MAX_RANGE = 50.0
FOV_RAD = np.radians(28.0)  # full field of view of camera and LiDAR, both axes


def beam_angles(n: int = SIZE, fov: float = FOV_RAD) -> tuple[np.ndarray, np.ndarray]:
    """(azimuth, zenith) arrays of the LiDAR's beams, rad, each (n,) from -fov/2 to +fov/2."""
    a = np.linspace(-fov / 2, fov / 2, n).astype(np.float32)
    return a.copy(), a.copy()


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """3x3 rotation whose columns are the sensor's x (right), y (forward) and z (up) in the world."""
    fwd = target - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    return np.stack([right, fwd, up], axis=1)


def _hit_scene(o: np.ndarray, d: np.ndarray, obj: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First hit of rays with the object and the ground z = 0.

    Returns:
        t (N,) distance (inf = sky), which (N,) 0 sky / 1 ground / 2 object, normal (N, 3).
    """
    n = len(o)
    t = np.full(n, np.inf)
    which = np.zeros(n, np.int64)
    normal = np.zeros((n, 3))
    with np.errstate(divide="ignore", invalid="ignore"):
        tg = -o[:, 2] / d[:, 2]
    ground = (tg > 1e-6) & np.isfinite(tg)
    t[ground], which[ground], normal[ground] = tg[ground], 1, (0.0, 0.0, 1.0)
    if obj["kind"] == "sphere":
        oc = o - obj["centre"]
        b = (oc * d).sum(1)
        c = (oc * oc).sum(1) - obj["radius"] ** 2
        disc = b * b - c
        ts = -b - np.sqrt(np.maximum(disc, 0))
        hit = (disc >= 0) & (ts > 1e-6) & (ts < t)
        t[hit], which[hit] = ts[hit], 2
        normal[hit] = (o[hit] + ts[hit, None] * d[hit] - obj["centre"]) / obj["radius"]
    else:
        rot = obj["rotation"]  # columns: the cube's axes in the world
        lo = (o - obj["centre"]) @ rot
        ld = d @ rot
        half = obj["half"]
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / np.where(np.abs(ld) < 1e-12, 1e-12, ld)
        t1, t2 = (-half - lo) * inv, (half - lo) * inv
        tmin, tmax = np.minimum(t1, t2).max(1), np.maximum(t1, t2).min(1)
        hit = (tmax >= tmin) & (tmin > 1e-6) & (tmin < t)
        axis = np.minimum(t1, t2).argmax(1)
        n_local = np.zeros((n, 3))
        n_local[np.arange(n), axis] = -np.sign(ld[np.arange(n), axis])
        t[hit], which[hit] = tmin[hit], 2
        normal[hit] = n_local[hit] @ rot.T
    return t, which, normal


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    import colorsys

    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


FIXED_EYE = np.array([0.0, -7.0, 2.2])     #: sensor position of ``pose="fixed"``, m (z up)
FIXED_TARGET = np.array([0.0, 0.0, 0.6])   #: point it looks at, m
POSES = ("fixed", "random")


def render_sample(cls: str, rng: np.random.Generator, pose: str = "fixed") -> tuple[np.ndarray, np.ndarray]:
    """One scene of class ``cls`` ("cubes" or "spheres"); ``pose`` as in the module docstring.

    Returns:
        rgba (64, 64, 4) uint8 and range image (64, 64) float32 metres (rows azimuth, columns zenith).

    Raises:
        ValueError: for an unknown ``pose``.
    """
    if pose not in POSES:
        raise ValueError(f"pose must be one of {list(POSES)}, got {pose!r}")
    if cls == "cubes":
        edge = rng.uniform(0.7, 1.8)
        rot = _random_rotation(rng) if rng.random() < 0.7 else np.eye(3)
        # rest the (rotated) cube on the ground: lowest corner at z = 0
        corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * edge / 2
        z0 = -(corners @ rot.T)[:, 2].min()
        obj = {"kind": "cube", "rotation": rot, "half": np.full(3, edge / 2), "centre": None, "z": z0}
    else:
        radius = rng.uniform(0.45, 1.05)
        obj = {"kind": "sphere", "radius": radius, "centre": None, "z": radius}
    if pose == "fixed":
        obj["centre"] = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-1.5, 1.5), obj["z"]])
        eye, target = FIXED_EYE, FIXED_TARGET
    else:
        obj["centre"] = np.array([rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0), obj["z"]])
        bearing = rng.uniform(-np.pi, np.pi)
        dist = rng.uniform(5.0, 9.0)
        eye = obj["centre"] + np.array([np.cos(bearing) * dist, np.sin(bearing) * dist, 0.0])
        eye[2] = rng.uniform(1.0, 3.5)
        target = obj["centre"] + rng.normal(0, 0.35, 3) * np.array([1, 1, 0.5])
    frame = _look_at(eye, target)

    # --- LiDAR: 64 x 64 beams, rows = azimuth, columns = zenith --------------------------------
    az, ze = beam_angles()
    A, Z = np.meshgrid(az, ze, indexing="ij")
    d_sensor = np.stack([np.sin(-A) * np.cos(-Z), np.cos(-A) * np.cos(-Z), np.sin(-Z)], -1).reshape(-1, 3)
    d_world = d_sensor @ frame.T
    t, _, _ = _hit_scene(np.broadcast_to(eye, d_world.shape), d_world, obj)
    rng_img = np.where(np.isfinite(t) & (t < MAX_RANGE), t + rng.normal(0, 0.01, t.shape), MAX_RANGE)
    range_image = rng_img.reshape(SIZE, SIZE).astype(np.float32)

    # --- camera: pinhole at the same pose, image rows top to bottom, columns left to right ------
    f = (SIZE / 2) / np.tan(FOV_RAD / 2)
    u = (np.arange(SIZE) + 0.5 - SIZE / 2) / f
    U, V = np.meshgrid(u, u)  # V grows downwards
    d_cam = np.stack([U, np.ones_like(U), -V], -1).reshape(-1, 3)
    d_cam /= np.linalg.norm(d_cam, axis=1, keepdims=True)
    d_world = d_cam @ frame.T
    o = np.broadcast_to(eye, d_world.shape)
    t, which, normal = _hit_scene(o, d_world, obj)
    light = rng.normal(size=3)
    light[2] = abs(light[2]) + 0.4
    light /= np.linalg.norm(light)
    ambient = rng.uniform(0.15, 0.45)
    obj_col = _hsv(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.4, 1.0))
    ground_col = _hsv(rng.choice([0.08, 0.12, 0.3, 0.6]) + rng.normal(0, 0.03), rng.uniform(0, 0.5),
                      rng.uniform(0.25, 0.8))
    sky_top = _hsv(rng.uniform(0.5, 0.7), rng.uniform(0.1, 0.6), rng.uniform(0.6, 1.0))
    sky_bottom = sky_top * rng.uniform(0.7, 1.1) + rng.uniform(0, 0.2)
    p = o + np.where(np.isfinite(t), t, 0)[:, None] * d_world
    lambert = np.clip((normal * light).sum(1), 0, 1)
    # hard shadows: is the light blocked by the object?
    shadow_t, shadow_which, _ = _hit_scene(p + normal * 1e-4, np.broadcast_to(light, p.shape), obj)
    lit = ~((shadow_which == 2) & np.isfinite(shadow_t))
    shade = ambient + (1 - ambient) * lambert * lit
    img = np.zeros((SIZE * SIZE, 3))
    sky_mix = np.clip((-V.reshape(-1) * f / SIZE) + 0.5, 0, 1)[:, None]
    img[which == 0] = (sky_mix * sky_top + (1 - sky_mix) * sky_bottom)[which == 0]
    checker = ((np.floor(p[:, 0] * 1.5) + np.floor(p[:, 1] * 1.5)) % 2)[:, None] * rng.uniform(0, 0.15)
    img[which == 1] = (ground_col * (1 - checker) * shade[:, None])[which == 1]
    img[which == 2] = (obj_col * shade[:, None])[which == 2]
    img = np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1)
    rgba = np.concatenate([img.reshape(SIZE, SIZE, 3), np.ones((SIZE, SIZE, 1))], -1)
    return (rgba * 255 + 0.5).astype(np.uint8), range_image


def _render_one(args):
    seed, ci, i, pose = args
    rgba, rimg = render_sample(CLASSES[ci], np.random.default_rng([seed, ci, i]), pose)
    return ci, i, rgba, rimg


def generate_cilp_folder(out: str | os.PathLike, per_class: int = 1000, seed: int = 0, workers: int = 1,
                         overwrite: bool = False, progress: bool = True, pose: str = "fixed") -> Path:
    """Write ``per_class`` samples of each class in the CILP folder layout (see module docstring).

    Written into ``OUT.tmp-PID`` and renamed to ``out`` when complete.

    Raises:
        FileExistsError: if ``out`` exists and ``overwrite`` is False; ValueError: per_class < 1 or an
        unknown ``pose``.
    """
    from PIL import Image
    from tqdm import tqdm

    out = Path(out)
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if pose not in POSES:
        raise ValueError(f"pose must be one of {list(POSES)}, got {pose!r}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    az, ze = beam_angles()
    for cls in CLASSES:
        (tmp / cls / "rgb").mkdir(parents=True)
        (tmp / cls / "lidar").mkdir(parents=True)
        np.save(tmp / cls / "azimuth.npy", az)
        np.save(tmp / cls / "zenith.npy", ze)
    jobs = [(seed, ci, i, pose) for ci in range(len(CLASSES)) for i in range(per_class)]
    executor = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        results = executor.map(_render_one, jobs, chunksize=64) if executor else map(_render_one, jobs)
        for ci, i, rgba, rimg in tqdm(results, total=len(jobs), desc="cilp samples", disable=not progress):
            Image.fromarray(rgba, "RGBA").save(tmp / CLASSES[ci] / "rgb" / f"{i:04d}.png")
            np.save(tmp / CLASSES[ci] / "lidar" / f"{i:04d}.npy", rimg)
    finally:
        if executor:
            executor.shutdown()
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
