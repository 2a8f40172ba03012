"""What the cameras see of a street: surface colours, textures, the sun and the sky.

:func:`scene_look` draws a :class:`SceneLook` per scene from its own generator (so the street and the
LiDAR sweeps do not change when cameras are added): a paint colour per vehicle from a realistic car
colour mix (white, black, grey, silver, red, blue, ...), a livery per bus and truck, clothing per
pedestrian, a colour per building, sign, bin and tree, a sun direction and strength (or an overcast
sky), a sky gradient with clouds, haze and an exposure. The texture functions colour hit points by
their material (:data:`shards.synthetic.world.MATERIALS`) and position in the road frame: asphalt
with wear, the lane markings of :func:`shards.synthetic.world.ground_material` (the ones the LiDAR
sees), paving joints, the building windows of :func:`shards.synthetic.world.window_glass`, wheels,
lights and number plates on vehicles, barrier stripes and cone bands.

Colours are linear RGB reflectances (albedo, 0-1) and radiances; :mod:`shards.synthetic.camera_render`
lights, tone-maps and encodes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import MATERIAL_IDS, Street

M = MATERIAL_IDS

# object classes for the colour and detail rules
CLS_OTHER, CLS_CAR, CLS_TRUCK, CLS_BUS, CLS_PED, CLS_BARRIER, CLS_CONE = range(7)
_CLASS_OF = {"vehicle.car": CLS_CAR, "vehicle.truck": CLS_TRUCK, "vehicle.bus.rigid": CLS_BUS,
             "human.pedestrian.adult": CLS_PED, "movable_object.barrier": CLS_BARRIER,
             "movable_object.trafficcone": CLS_CONE}

# sRGB car paint colours and their share of cars on the road (roughly the global fleet's)
CAR_PAINTS = {
    "white": ((236, 236, 234), 0.24), "black": ((18, 18, 20), 0.19), "grey": ((108, 110, 114), 0.16),
    "silver": ((176, 179, 184), 0.13), "red": ((158, 18, 20), 0.08), "blue": ((22, 48, 122), 0.09),
    "beige": ((168, 150, 118), 0.03), "brown": ((92, 58, 36), 0.02), "green": ((24, 84, 44), 0.02),
    "yellow": ((222, 184, 30), 0.015), "orange": ((214, 96, 20), 0.015), "dark red": ((92, 14, 24), 0.02),
}
_LIVERIES = [(236, 236, 234), (200, 30, 30), (30, 70, 160), (30, 120, 60), (235, 180, 20), (120, 120, 125)]
_WALLS = [(196, 180, 150), (170, 92, 70), (150, 150, 146), (222, 214, 196), (120, 104, 92), (205, 196, 170),
          (176, 150, 120), (98, 100, 108), (226, 226, 222), (150, 120, 84)]
_CLOTHES = [(30, 32, 40), (40, 52, 90), (90, 90, 96), (150, 30, 30), (210, 210, 205), (60, 80, 50),
            (120, 90, 60), (200, 160, 40), (30, 30, 30), (70, 110, 160)]
# fixed albedo (sRGB) per material, where nothing per object applies
_BASE = {"asphalt": (62, 62, 64), "marking": (220, 220, 212), "concrete": (150, 148, 140), "grass": (70, 102, 44),
         "wall": (180, 170, 150), "glass": (28, 34, 44), "paint": (120, 120, 120), "car_glass": (14, 16, 20),
         "plate": (30, 80, 170), "clothing": (60, 60, 70), "metal": (112, 114, 118), "bark": (78, 58, 40),
         "foliage": (52, 84, 34), "barrier": (200, 40, 30), "cone": (240, 110, 20), "roof": (60, 60, 60)}


def srgb_to_linear(rgb) -> np.ndarray:
    """sRGB 0-255 -> linear 0-1 (float32, gamma 2.2)."""
    return (np.asarray(rgb, np.float32) / 255.0) ** 2.2


@dataclass
class SceneLook:
    """Appearance of one scene (see module docstring). Colours are linear RGB float32.

    Attributes:
        sun: (3,) unit vector toward the sun, road frame.
        sun_rgb: (3,) sun irradiance; sky_rgb: (3,) ambient sky irradiance (on a horizontal surface).
        zenith, horizon: (3,) sky radiance at the zenith and the horizon.
        cloud_cover: 0 (clear) - 1 (overcast); haze_m: distance at which haze reaches 63 %.
        exposure: scale before tone mapping.
        box_albedo, cyl_albedo, sph_albedo: (M, 3) per primitive, in :func:`shards.synthetic.world._primitives`
            order (static primitives first, then each object's parts).
        obj_class: (n_objects,) int8 class code (``CLS_*``); obj_paint: (n_objects, 3) body colour.
        seed: integer seed of the procedural textures.
    """

    sun: np.ndarray
    sun_rgb: np.ndarray
    sky_rgb: np.ndarray
    zenith: np.ndarray
    horizon: np.ndarray
    cloud_cover: float
    haze_m: float
    exposure: float
    box_albedo: np.ndarray
    cyl_albedo: np.ndarray
    sph_albedo: np.ndarray
    obj_class: np.ndarray
    obj_paint: np.ndarray
    seed: int


def _jitter(rng, rgb, amount=0.06) -> np.ndarray:
    return np.clip(srgb_to_linear(rgb) * (1 + rng.normal(0, amount, 3)), 0, 1).astype(np.float32)


def scene_look(street: Street, rng: np.random.Generator) -> SceneLook:
    """Draw the appearance of ``street`` (deterministic given ``rng``; the street is not changed).

    Returns:
        :class:`SceneLook` whose per-primitive colour arrays follow ``_primitives(street, t)`` for any ``t``.
    """
    names, shares = list(CAR_PAINTS), np.array([v[1] for v in CAR_PAINTS.values()])
    obj_class = np.array([_CLASS_OF.get(o.category, CLS_OTHER) for o in street.objects], np.int8)
    paint = np.zeros((len(street.objects), 3), np.float32)
    part_colours = []
    for k, obj in enumerate(street.objects):
        cls = obj_class[k]
        if cls == CLS_CAR:
            paint[k] = _jitter(rng, CAR_PAINTS[names[rng.choice(len(names), p=shares / shares.sum())]][0], 0.05)
        elif cls in (CLS_TRUCK, CLS_BUS):
            paint[k] = _jitter(rng, _LIVERIES[0] if rng.random() < 0.5 else _LIVERIES[rng.integers(len(_LIVERIES))])
        elif cls == CLS_PED:
            paint[k] = _jitter(rng, _CLOTHES[rng.integers(len(_CLOTHES))], 0.1)  # top
        else:
            paint[k] = srgb_to_linear(_BASE["barrier" if cls == CLS_BARRIER else "cone"])
        cols = []
        for p_i, (_kind, _p, mat) in enumerate(obj.parts):
            if mat == "paint":
                cols.append(paint[k])
            elif mat == "clothing":  # legs: trousers; top: the drawn colour
                cols.append(_jitter(rng, _CLOTHES[rng.integers(3)], 0.1) if p_i == 0 else paint[k])
            else:
                cols.append(srgb_to_linear(_BASE[mat]))
        part_colours.append(cols)

    box_alb, cyl_alb = [], []
    for _params, mat, _windows in street.static_boxes:
        if mat == "wall":
            box_alb.append(_jitter(rng, _WALLS[rng.integers(len(_WALLS))]))
        elif mat == "paint":  # bins
            box_alb.append(_jitter(rng, [(40, 70, 50), (60, 60, 64), (30, 50, 90)][rng.integers(3)]))
        elif mat == "plate":  # signs
            signs = [(30, 80, 170), (200, 30, 30), (230, 230, 230), (240, 190, 20)]
            box_alb.append(_jitter(rng, signs[rng.integers(len(signs))]))
        else:
            box_alb.append(_jitter(rng, _BASE[mat], 0.04))
    for _params, mat in street.static_cylinders:
        cyl_alb.append(_jitter(rng, _BASE[mat], 0.08))
    sph_alb = [_jitter(rng, _BASE["foliage"], 0.18) for _ in street.static_spheres]
    for k, obj in enumerate(street.objects):  # object parts after the static primitives, as _primitives
        for (kind, _p, _mat), col in zip(obj.parts, part_colours[k]):
            (box_alb if kind == "box" else cyl_alb).append(col)

    overcast = rng.random() < 0.25
    elevation = rng.uniform(np.radians(22), np.radians(68))
    azimuth = rng.uniform(-np.pi, np.pi)
    sun = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])
    warm = np.array([1.0, 0.94 + 0.04 * np.sin(elevation), 0.84 + 0.12 * np.sin(elevation)], np.float32)
    if overcast:
        sun_rgb = warm * rng.uniform(0.3, 0.7)
        sky_rgb = np.array([1.0, 1.0, 1.02], np.float32) * rng.uniform(1.0, 1.3)
        zenith = np.array([0.62, 0.64, 0.68], np.float32) * rng.uniform(0.9, 1.1)
        horizon = np.array([0.80, 0.81, 0.83], np.float32)
        cover = rng.uniform(0.85, 1.0)
    else:
        sun_rgb = warm * rng.uniform(2.6, 3.4)
        sky_rgb = np.array([0.62, 0.72, 0.95], np.float32) * rng.uniform(0.75, 0.95)
        zenith = np.array([0.16, 0.30, 0.70], np.float32) * rng.uniform(0.85, 1.15)
        horizon = np.array([0.62, 0.72, 0.86], np.float32) * rng.uniform(0.9, 1.1)
        cover = rng.uniform(0.0, 0.55)
    as_arr = lambda rows, w: np.array(rows, np.float32).reshape(-1, w)  # noqa: E731
    return SceneLook(sun=sun, sun_rgb=sun_rgb.astype(np.float32), sky_rgb=sky_rgb, zenith=zenith, horizon=horizon,
                     cloud_cover=float(cover), haze_m=float(rng.uniform(350, 1200)),
                     exposure=float(rng.uniform(0.95, 1.15)), box_albedo=as_arr(box_alb, 3),
                     cyl_albedo=as_arr(cyl_alb, 3), sph_albedo=as_arr(sph_alb, 3), obj_class=obj_class,
                     obj_paint=paint, seed=int(rng.integers(1 << 30)))


def value_noise(x: np.ndarray, y: np.ndarray, cell: float, seed: int) -> np.ndarray:
    """Smooth lattice noise in [0, 1) at a spatial scale of ``cell`` (same units as ``x, y``); float32."""
    gx, gy = x / np.float32(cell), y / np.float32(cell)
    fx0, fy0 = np.floor(gx), np.floor(gy)
    fx, fy = gx - fx0, gy - fy0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    # lattice hash in wrapping uint32 arithmetic
    ix = fx0.astype(np.int32).view(np.uint32) * np.uint32(73856093)
    iy = fy0.astype(np.int32).view(np.uint32) * np.uint32(19349663)
    sx, sy, s0 = np.uint32(73856093), np.uint32(19349663), np.uint32((seed * 83492791) & 0xFFFFFFFF)

    def h(i, j):
        v = i ^ j ^ s0
        v = (v ^ (v >> np.uint32(13))) * np.uint32(1274126177)
        return ((v ^ (v >> np.uint32(16))) & np.uint32(0xFFFF)).astype(np.float32) * np.float32(1 / 65536)

    a, b, c, d = h(ix, iy), h(ix + sx, iy), h(ix, iy + sy), h(ix + sx, iy + sy)
    ab = a + (b - a) * fx
    return ab + ((c + (d - c) * fx) - ab) * fy


def sky_radiance(look: SceneLook, d: np.ndarray, clouds: bool = True) -> np.ndarray:
    """Sky radiance (N, 3) float32 along unit directions ``d`` (N, 3) (road frame): zenith-horizon gradient,
    clouds on a layer 1.2 km up (unless ``clouds`` is False), a glow and disc around the sun."""
    dz = d[:, 2].astype(np.float32)
    w = np.sqrt(np.clip(dz, 0, 1))[:, None]
    col = look.horizon[None, :] * (1 - w) + look.zenith[None, :] * w
    col = np.where(dz[:, None] < 0, look.horizon[None, :] * 0.85, col)
    up = dz > 0.02
    if clouds and look.cloud_cover > 0 and up.any():
        s = np.float32(1200.0) / dz[up]
        cx, cy = d[up, 0] * s, d[up, 1] * s
        n = 0.6 * value_noise(cx, cy, 900.0, look.seed) + 0.4 * value_noise(cx, cy, 260.0, look.seed + 1)
        cover = np.clip((n - (1 - look.cloud_cover)) / 0.25, 0, 1) * np.clip((dz[up] - 0.02) / 0.15, 0, 1)
        cloud = np.float32(0.9) * look.horizon[None, :] / look.horizon.max() * (0.75 + 0.35 * n[:, None])
        col[up] = col[up] * (1 - cover[:, None]) + cloud * cover[:, None]
    sun = look.sun.astype(np.float32)
    cos_sun = np.clip(d[:, 0] * sun[0] + d[:, 1] * sun[1] + d[:, 2] * sun[2], -1, 1)
    glow = 0.25 * np.exp((cos_sun - 1) * 12) + 6.0 * (cos_sun > 0.99996)
    return col + glow[:, None] * (look.sun_rgb[None, :] / 3.0) * (1 - 0.8 * look.cloud_cover)


def ground_albedo(street: Street, look: SceneLook, x: np.ndarray, y: np.ndarray, mat: np.ndarray) -> np.ndarray:
    """Albedo (N, 3) of ground points (road frame, m) with material ids ``mat`` (asphalt, marking, grass):
    asphalt at two scales of wear, darker wheel tracks, grass with patches, slightly worn markings."""
    fine = value_noise(x, y, 0.35, look.seed + 11)
    coarse = value_noise(x, y, 4.0, look.seed + 12)
    out = np.empty((len(x), 3), np.float32)
    base = srgb_to_linear(_BASE["asphalt"])
    track = np.zeros(len(x), np.float32)
    for lane in (street.lane_x, -street.lane_x):  # wheel paths 0.8 m either side of both lanes' centres
        for off in (-0.8, 0.8):
            track = np.maximum(track, 1 - ((x - np.float32(lane + off)) / np.float32(0.4)) ** 2)
    shade = (0.75 + 0.35 * fine) * (0.86 + 0.28 * coarse) * (1 - 0.18 * track)
    out[:] = base[None, :] * shade[:, None]
    g = mat == M["grass"]
    if g.any():
        gc = srgb_to_linear(_BASE["grass"])
        out[g] = gc[None, :] * (0.6 + 0.7 * value_noise(x[g], y[g], 1.5, look.seed + 13))[:, None]
    mk = mat == M["marking"]
    if mk.any():
        out[mk] = srgb_to_linear(_BASE["marking"])[None, :] * (0.8 + 0.2 * fine[mk])[:, None]
    return out


def sidewalk_texture(x: np.ndarray, y: np.ndarray, look: SceneLook) -> np.ndarray:
    """(N,) float32 brightness factor of paving on horizontal concrete: 0.6 m slabs with dark joints."""
    jx = np.abs(np.mod(x, 0.6) - 0.3) > 0.28
    jy = np.abs(np.mod(y, 0.6) - 0.3) > 0.28
    return np.where(jx | jy, 0.7, 1.0).astype(np.float32) * (0.9 + 0.2 * value_noise(x, y, 0.6, look.seed + 21))


def wall_texture(x: np.ndarray, y: np.ndarray, z: np.ndarray, look: SceneLook) -> np.ndarray:
    """(N,) float32 brightness factor of walls: weathering and darker floor bands between windows."""
    band = np.abs(np.mod(z, 3.2) - 0.5) < 0.25
    return (0.85 + 0.25 * value_noise(x + y, z, 2.5, look.seed + 31)) * np.where(band, 0.92, 1.0).astype(np.float32)


def vehicle_albedo(local: np.ndarray, size: np.ndarray, cls: np.ndarray, paint: np.ndarray,
                   normal_local: np.ndarray) -> np.ndarray:
    """Albedo (N, 3) of vehicle body points: paint with tyres and hubs on the sides, head and tail lights
    and a number plate on the front (+x) and rear faces, and a dark grille.

    Args:
        local: (N, 3) points in the object's box frame (x along its heading, z from the box centre), m.
        size: (N, 3) box length, width, height, m; cls: (N,) ``CLS_*``; paint: (N, 3) body colour.
        normal_local: (N, 3) surface normals in the same frame.
    """
    out = paint.copy()
    hl, hw = size[:, 0] / 2, size[:, 1] / 2
    zg = local[:, 2] + size[:, 2] / 2  # height above the road
    heavy = cls != CLS_CAR
    rw = np.where(heavy, 0.5, 0.33).astype(np.float32)
    axle = hl - np.where(heavy, np.maximum(1.2, 0.15 * size[:, 0]), np.maximum(0.75, 0.17 * size[:, 0]))
    side = np.abs(normal_local[:, 1]) > 0.5
    for sgn in (-1.0, 1.0):
        r = np.hypot(local[:, 0] - sgn * axle, zg - rw)
        tyre = side & (r < rw)
        out[tyre] = np.float32(0.02)
        out[side & (r < rw * 0.55)] = np.float32(0.18)
    front, rear = normal_local[:, 0] > 0.5, normal_local[:, 0] < -0.5
    lamp_z = (zg > np.where(heavy, 0.55, 0.6)) & (zg < np.where(heavy, 0.8, 0.78))
    lamp_y = (np.abs(local[:, 1]) > hw * 0.55) & (np.abs(local[:, 1]) < hw * 0.92)
    out[front & lamp_z & lamp_y] = np.array([0.85, 0.85, 0.8], np.float32)
    out[rear & lamp_z & lamp_y] = np.array([0.45, 0.01, 0.01], np.float32)
    plate = (front | rear) & (np.abs(local[:, 1]) < 0.26) & (zg > 0.32) & (zg < 0.44)
    out[plate] = np.array([0.8, 0.8, 0.75], np.float32)
    grille = front & (np.abs(local[:, 1]) < hw * 0.45) & (zg > 0.5) & (zg < 0.7)
    out[grille] = out[grille] * 0.25
    return out
