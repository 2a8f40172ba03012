"""Procedural streets and the HDL-32E sweeps that see them.

A :class:`Street` is built in a *road frame*: the road runs along +y, x is lateral, z up, ground at
z = 0. It holds ground and lane markings, kerbs and sidewalks, building walls with windows, fences
and hedges, poles and trees (static), and vehicles, pedestrians, barriers and cones (annotated
objects, some moving). :func:`render_sweep` ray-casts one LiDAR sweep from a moving ego the way the
real sensor records it: ring-major firing order (point ``i`` has ring ``i % 32``), column azimuths
decreasing from ego-left, the ego moving during the 50 ms sweep and the points motion-compensated to
the last column (so no-return rays, fired as (0, 0, 0), end on a short line behind the sensor, as in
real nuScenes files), ego-roof hits in the lowest rings, range noise, dropouts on glass and at
grazing incidence, porous foliage, and a 105 m maximum range.

Everything is deterministic given the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from toolkit.lidar.sensors import HDL32E, SpinningLidar

from .raycast import box_normals, ray_boxes, ray_cylinders, ray_ground, ray_spheres

# name -> (intensity mean, intensity std, dropout probability, foliage penetration depth m)
MATERIALS: dict[str, tuple[float, float, float, float]] = {
    "asphalt": (8, 4, 0.002, 0.0),
    "marking": (70, 20, 0.0, 0.0),
    "concrete": (22, 8, 0.002, 0.0),
    "grass": (10, 5, 0.01, 0.05),
    "wall": (35, 15, 0.004, 0.0),
    "glass": (12, 8, 0.3, 0.0),
    "paint": (22, 16, 0.01, 0.0),
    "car_glass": (8, 6, 0.35, 0.0),
    "plate": (150, 40, 0.0, 0.0),
    "clothing": (14, 8, 0.0, 0.0),
    "metal": (55, 25, 0.0, 0.0),
    "bark": (10, 5, 0.0, 0.0),
    "foliage": (9, 5, 0.08, 1.2),
    "barrier": (45, 25, 0.0, 0.0),
    "cone": (90, 30, 0.0, 0.0),
    "roof": (25, 10, 0.0, 0.0),
}
MATERIAL_IDS = {name: i for i, name in enumerate(MATERIALS)}
_MAT = np.array(list(MATERIALS.values()), dtype=np.float64)

# nuScenes lidar -> ego mounting (LIDAR_TOP): 0.94 m ahead of the rear axle, 1.84 m up, yaw -90 deg
LIDAR_IN_EGO_T = np.array([0.943713, 0.0, 1.84023])
LIDAR_IN_EGO_Q = np.array([np.cos(-np.pi / 4), 0.0, 0.0, np.sin(-np.pi / 4)])  # w, x, y, z

# Ego-roof patch under the sensor, in the lidar frame (x right, y forward, z up), as boxes
# (cx, cy, cz, hx, hy, hz, yaw). The real sweep has roof hits at 0.4-1.0 m in rings 0-10.
_ROOF = np.array([
    [0.0, -0.2, -0.9, 0.56, 0.76, 0.55, 0.0],    # roof top at z = -0.35 m
    [0.0, 0.0, -0.45, 0.22, 0.22, 0.2, 0.0],     # sensor mount, top at z = -0.25 m
])


@dataclass
class StreetObject:
    """An annotated object (one ``sample_annotation`` per sample it is seen in).

    Attributes:
        category: nuScenes category name (``vehicle.car``, ``human.pedestrian.adult``, ...).
        centre: (3,) box centre in the road frame at t = 0, m.
        size: (3,) length (along yaw), width, height, m.
        yaw: heading in the road frame, rad (0 = along +x).
        velocity: (2,) m/s in the road frame.
        attribute: nuScenes attribute name or ``""``.
        parts: list of (kind, params, material) primitives relative to the box centre and yaw.
    """

    category: str
    centre: np.ndarray
    size: np.ndarray
    yaw: float
    velocity: np.ndarray
    attribute: str
    parts: list = field(default_factory=list)

    def centre_at(self, t: float) -> np.ndarray:
        return self.centre + np.array([self.velocity[0] * t, self.velocity[1] * t, 0.0])


@dataclass
class Street:
    """A procedural street in the road frame (see module docstring)."""

    road_half_width: float
    lane_x: float
    ego_speed: float
    ego_heading: float
    length: float
    static_boxes: list = field(default_factory=list)      # (params(7), material, window flag)
    static_cylinders: list = field(default_factory=list)  # (params(5), material)
    static_spheres: list = field(default_factory=list)    # (params(4), material)
    objects: list = field(default_factory=list)
    kerb_height: float = 0.15
    sidewalk_width: float = 3.0
    marking_period: float = 9.0
    ego_pitch: float = 0.0
    ego_roll: float = 0.0
    leafy: float = 0.5
    lidar_height: float = 1.84


def _box(cx, cy, cz_bottom, length, width, height, yaw=0.0):
    """Box params from a bottom-centred description: (cx, cy, cz, hx, hy, hz, yaw)."""
    return np.array([cx, cy, cz_bottom + height / 2, length / 2, width / 2, height / 2, yaw])


def _vehicle(rng, category: str, x: float, y: float, yaw: float, velocity, attribute: str) -> StreetObject:
    """A vehicle as body, cabin or cargo boxes; the annotation box encloses them all."""
    parts = []
    if category == "vehicle.car":
        length, width = rng.uniform(3.9, 5.0), rng.uniform(1.7, 2.0)
        clearance, body_h, cabin_h = rng.uniform(0.15, 0.3), rng.uniform(0.65, 0.9), rng.uniform(0.45, 0.65)
        parts.append(("box", (0.0, 0.0, clearance, length, width, body_h), "paint"))
        cab_len = length * rng.uniform(0.45, 0.6)
        parts.append(("box", (-length * 0.05, 0.0, clearance + body_h, cab_len, width * 0.88, cabin_h), "car_glass"))
        height = clearance + body_h + cabin_h
    elif category == "vehicle.truck":
        length, width, height = rng.uniform(5.5, 11.0), rng.uniform(2.2, 2.55), rng.uniform(2.6, 3.8)
        cab = rng.uniform(1.6, 2.3)
        parts.append(("box", (length / 2 - cab / 2, 0.0, 0.35, cab, width, height * 0.85 - 0.35), "paint"))
        parts.append(("box", (-cab / 2 - 0.1, 0.0, 0.9, length - cab - 0.2, width, height - 0.9), "paint"))
        parts.append(("box", (0.0, 0.0, 0.35, length - 0.6, width * 0.8, 0.55), "metal"))
    elif category == "vehicle.bus.rigid":
        length, width, height = rng.uniform(10.0, 12.5), 2.5, rng.uniform(3.0, 3.4)
        parts.append(("box", (0.0, 0.0, 0.3, length, width, 1.0), "paint"))
        parts.append(("box", (0.0, 0.0, 1.3, length, width, height - 1.3), "car_glass"))
    else:  # van
        category = "vehicle.car"
        length, width, height = rng.uniform(4.6, 5.6), rng.uniform(1.9, 2.1), rng.uniform(1.9, 2.4)
        parts.append(("box", (0.0, 0.0, 0.25, length, width, height - 0.25), "paint"))
    return StreetObject(category, np.array([x, y, height / 2]), np.array([length, width, height]), yaw,
                        np.asarray(velocity, float), attribute, parts)


def _pedestrian(rng, x, y, velocity) -> StreetObject:
    h = rng.uniform(1.5, 1.9)
    w = rng.uniform(0.45, 0.65)
    parts = [("box", (0.0, 0.0, 0.0, 0.3, w * 0.6, h * 0.47), "clothing"),
             ("box", (0.0, 0.0, h * 0.47, 0.35, w, h * 0.53), "clothing")]
    moving = np.hypot(*velocity) > 0.1
    yaw = float(np.arctan2(velocity[1], velocity[0])) if moving else rng.uniform(-np.pi, np.pi)
    return StreetObject("human.pedestrian.adult", np.array([x, y, h / 2]), np.array([0.35, w, h]), yaw,
                        np.asarray(velocity, float), "pedestrian.moving" if moving else "pedestrian.standing",
                        parts)


def build_street(rng: np.random.Generator, route_length: float, margin: float = 130.0) -> Street:
    """Generate one street long enough for the ego to drive ``route_length`` m with ``margin`` m of
    scenery before and after (the sensor sees 105 m).

    Returns:
        Street in the road frame; the ego starts at y = 0 in lane x = ``lane_x``.
    """
    half = rng.uniform(3.5, 8.0)
    side = rng.choice([-1.0, 1.0])  # which side of the road the ego drives on
    lane_x = side * half / 2 + rng.normal(0, 0.2)
    speed = 0.0 if rng.random() < 0.12 else rng.uniform(3.0, 13.0)
    street = Street(road_half_width=half, lane_x=lane_x, ego_speed=speed,
                    ego_heading=rng.normal(0, np.radians(1.5)), length=route_length,
                    kerb_height=rng.uniform(0.1, 0.22), sidewalk_width=rng.uniform(1.5, 5.0),
                    marking_period=rng.uniform(6, 12), ego_pitch=rng.normal(0, np.radians(0.7)),
                    ego_roll=rng.normal(0, np.radians(0.5)), leafy=rng.uniform(0.2, 1.0),
                    lidar_height=LIDAR_IN_EGO_T[2] + rng.normal(0, 0.03))
    y0, y1 = -margin, route_length + margin

    # cross streets: gaps in sidewalks and buildings
    crossings = []
    y = y0 + rng.uniform(10, 80)
    while y < y1:
        if rng.random() < 0.5:
            crossings.append((y, y + rng.uniform(8, 18)))
        y += rng.uniform(50, 140)

    def free(ya, yb):
        return all(yb < a or ya > b for a, b in crossings)

    kerb = street.kerb_height
    for s in (-1.0, 1.0):
        # sidewalks (their road-side face is the kerb), split at crossings
        edges = [y0] + [v for c in crossings for v in c] + [y1]
        for a, b in zip(edges[0::2], edges[1::2]):
            cx = s * (half + street.sidewalk_width / 2)
            street.static_boxes.append((_box(cx, (a + b) / 2, -0.5, street.sidewalk_width, b - a, 0.5 + kerb),
                                        "concrete", False))
        _frontage(rng, street, s, y0, y1, free)
        _street_furniture(rng, street, s, y0, y1, free)
    _parked_vehicles(rng, street, y0, y1, free)
    _traffic(rng, street, side, y0, y1)
    _pedestrians(rng, street, y0, y1)
    _construction(rng, street, route_length)
    return street


def _frontage(rng, street: Street, s: float, y0: float, y1: float, free) -> None:
    """Buildings (with balconies, columns, awnings and glass), fences, hedges or open ground with trees."""
    x_front = street.road_half_width + street.sidewalk_width
    y = y0
    while y < y1:
        seg = rng.uniform(6, 45)
        kind = rng.choice(["building"] * 4 + ["fence", "hedge", "open"])
        if free(y, y + seg):
            setback = rng.uniform(0, 6) if kind == "building" else rng.uniform(0, 1.5)
            depth = rng.uniform(8, 25)
            face = s * (x_front + setback)
            if kind == "building":
                height = rng.uniform(3.5, 45) if rng.random() < 0.8 else rng.uniform(45, 80)
                street.static_boxes.append((_box(face + s * depth / 2, y + seg / 2, -1.0, depth, seg, height + 1.0),
                                            "wall", bool(rng.random() < 0.8)))
                floor = rng.uniform(2.8, 3.8)
                if rng.random() < 0.5:  # balconies or ledges along some floors
                    bw, bd = rng.uniform(2, min(8, seg)), rng.uniform(0.6, 1.6)
                    for level in range(1, int(height / floor)):
                        if rng.random() < 0.6:
                            by = y + rng.uniform(bw / 2, max(bw / 2 + 0.1, seg - bw / 2))
                            street.static_boxes.append((_box(face - s * bd / 2, by, level * floor - 0.15, bd, bw,
                                                             rng.uniform(0.15, 1.1)), "wall", False))
                if rng.random() < 0.35 and setback > 1.5:  # colonnade or awning at street level
                    for cy in np.arange(y + 1.0, y + seg - 0.5, rng.uniform(3.0, 6.0)):
                        street.static_cylinders.append((np.array([face - s * (setback - 0.6), cy, street.kerb_height,
                                                                  rng.uniform(0.15, 0.35), rng.uniform(3.0, 4.5)]),
                                                        "concrete"))
                elif rng.random() < 0.3:
                    aw = rng.uniform(1.0, 2.5)
                    street.static_boxes.append((_box(face - s * aw / 2, y + seg / 2, rng.uniform(2.5, 3.5), aw, seg * 0.9,
                                                     0.15), "metal", False))
            elif kind == "fence":
                street.static_boxes.append((_box(s * (x_front + setback + 0.1), y + seg / 2, 0, 0.2, seg,
                                                 rng.uniform(1.0, 2.2)), "metal", False))
            elif kind == "hedge":
                street.static_boxes.append((_box(s * (x_front + setback + 0.6), y + seg / 2, 0, 1.2, seg,
                                                 rng.uniform(0.8, 2.0)), "foliage", False))
            n_trees = rng.poisson(2.5 * street.leafy if kind == "open" else 0.6 * street.leafy)
            for _ in range(n_trees):
                _tree(rng, street, s * (x_front + rng.uniform(1, 12)), y + rng.uniform(0, seg))
            for _ in range(rng.poisson(1.5 * street.leafy)):
                _bush(rng, street, s * (x_front + rng.uniform(0.3, 3)), y + rng.uniform(0, seg))
        y += seg + (rng.uniform(0, 12) if rng.random() < 0.3 else 0.0)


def _street_furniture(rng, street: Street, s: float, y0: float, y1: float, free) -> None:
    """Poles, lamps, signs, bollards, bins and street trees along the kerb."""
    half, kerb = street.road_half_width, street.kerb_height
    tree_gap = rng.uniform(7, 20) if rng.random() < street.leafy else None
    y = y0 + rng.uniform(0, 10)
    while y < y1:
        if free(y - 2, y + 2):
            px = s * (half + rng.uniform(0.4, 0.9))
            kind = rng.choice(["pole", "lamp", "sign", "bollard", "bin"])
            if kind in ("pole", "lamp", "sign"):
                h = rng.uniform(2.5, 4) if kind == "sign" else rng.uniform(4, 11)
                street.static_cylinders.append((np.array([px, y, kerb, rng.uniform(0.05, 0.16), h]), "metal"))
                if kind == "lamp":
                    street.static_boxes.append((_box(px - s * 0.9, y, kerb + h - 0.3, 1.8, 0.25, 0.2), "metal", False))
                elif kind == "sign":
                    street.static_boxes.append((_box(px, y, kerb + h - 0.8, 0.05, rng.uniform(0.5, 1.2), 0.7,
                                                     rng.uniform(-0.3, 0.3)), "plate", False))
            elif kind == "bollard":
                for k in range(rng.integers(1, 6)):
                    street.static_cylinders.append((np.array([px, y + 1.5 * k, kerb, 0.1, rng.uniform(0.7, 1.1)]), "metal"))
            else:
                street.static_boxes.append((_box(px + s * 0.3, y, kerb, 0.6, 0.6, rng.uniform(0.9, 1.3)), "paint", False))
        y += rng.uniform(6, 30)
    if tree_gap is not None:  # a row of street trees
        y = y0 + rng.uniform(0, tree_gap)
        while y < y1:
            if free(y - 3, y + 3):
                _tree(rng, street, s * (half + rng.uniform(0.6, 1.4)), y)
            y += tree_gap * rng.uniform(0.7, 1.3)


def _parked_vehicles(rng, street: Street, y0: float, y1: float, free) -> None:
    half = street.road_half_width
    for s in (-1.0, 1.0):
        if rng.random() < 0.25:
            continue
        y = y0 + rng.uniform(0, 15)
        while y < y1:
            cat = rng.choice(["vehicle.car", "vehicle.car", "vehicle.car", "van", "vehicle.truck"])
            v = _vehicle(rng, cat, 0.0, 0.0, 0.0, (0, 0), "vehicle.parked")
            if free(y - 2, y + v.size[0] + 2):
                x = s * (half - v.size[1] / 2 - rng.uniform(0.1, 0.5))
                v.centre[:2] = (x, y + v.size[0] / 2)
                v.yaw = np.pi / 2 + rng.normal(0, 0.04) + (np.pi if rng.random() < 0.5 else 0.0)
                if abs(v.centre[0] - street.lane_x) > 1.6 + v.size[1] / 2:
                    street.objects.append(v)
            y += v.size[0] + rng.uniform(0.8, 25 if rng.random() < 0.7 else 60)


def _traffic(rng, street: Street, side: float, y0: float, y1: float) -> None:
    """Moving vehicles in the other lane(s) and possibly a lead vehicle in the ego lane."""
    half, speed = street.road_half_width, street.ego_speed
    for _ in range(rng.integers(0, 10)):
        other_x = -side * half / 2 + rng.normal(0, 0.2)
        direction = -side if rng.random() < 0.8 else side
        spd = rng.uniform(3, 14)
        cat = rng.choice(["vehicle.car", "vehicle.car", "van", "vehicle.truck", "vehicle.bus.rigid"])
        street.objects.append(_vehicle(rng, cat, other_x, rng.uniform(y0, y1),
                                       np.pi / 2 if direction * side > 0 else -np.pi / 2,
                                       (0.0, direction * side * spd), "vehicle.moving"))
    if rng.random() < 0.6 and speed > 0:
        street.objects.append(_vehicle(rng, rng.choice(["vehicle.car", "van", "vehicle.truck"]), street.lane_x,
                                       rng.uniform(9, 35), np.pi / 2, (0.0, speed), "vehicle.moving"))


def _pedestrians(rng, street: Street, y0: float, y1: float) -> None:
    half = street.road_half_width
    for _ in range(rng.integers(0, 25)):
        s = rng.choice([-1.0, 1.0])
        x = s * (half + rng.uniform(0.5, street.sidewalk_width - 0.3))
        vel = (0.0, rng.choice([-1, 1]) * rng.uniform(0.8, 1.6)) if rng.random() < 0.6 else (0.0, 0.0)
        ped = _pedestrian(rng, x, rng.uniform(y0, y1), vel)
        ped.centre[2] += street.kerb_height
        street.objects.append(ped)


def _construction(rng, street: Street, route_length: float) -> None:
    """Sometimes a construction zone: barriers and cones along one kerb."""
    if rng.random() >= 0.3:
        return
    half = street.road_half_width
    s = rng.choice([-1.0, 1.0])
    ys = rng.uniform(0, max(route_length, 30))
    for k in range(rng.integers(3, 12)):
        if rng.random() < 0.5:
            street.objects.append(StreetObject(
                "movable_object.barrier", np.array([s * (half - 0.4), ys + k * 2.1, 0.5]),
                np.array([2.0, 0.5, 1.0]), np.pi / 2, np.zeros(2), "",
                [("box", (0.0, 0.0, 0.0, 2.0, 0.5, 1.0), "barrier")]))
        else:
            street.objects.append(StreetObject(
                "movable_object.trafficcone", np.array([s * (half - 0.4), ys + k * 2.1, 0.35]),
                np.array([0.35, 0.35, 0.7]), 0.0, np.zeros(2), "",
                [("cyl", (0.0, 0.0, 0.0, 0.15, 0.7), "cone")]))


def _tree(rng, street: Street, x: float, y: float) -> None:
    """A trunk and a crown of 1-4 overlapping foliage clumps (porous: returns scatter inside)."""
    trunk_h = rng.uniform(1.8, 5.0)
    street.static_cylinders.append((np.array([x, y, 0.0, rng.uniform(0.1, 0.35), trunk_h + 0.5]), "bark"))
    r = rng.uniform(1.2, 4.0)
    for k in range(rng.integers(1, 5)):
        off = rng.normal(0, r * 0.4, 3) if k else np.zeros(3)
        rk = r * rng.uniform(0.55, 1.0)
        street.static_spheres.append((np.array([x + off[0], y + off[1], trunk_h + rk * 0.7 + abs(off[2]), rk]),
                                      "foliage"))


def _bush(rng, street: Street, x: float, y: float) -> None:
    r = rng.uniform(0.4, 1.3)
    street.static_spheres.append((np.array([x, y, r * rng.uniform(0.3, 0.8), r]), "foliage"))


def _primitives(street: Street, t: float):
    """All primitives at time ``t`` (s): arrays plus material ids and object ids (-1 = static)."""
    boxes, bmat, bobj, bwin = [], [], [], []
    for params, mat, windows in street.static_boxes:
        boxes.append(params)
        bmat.append(MATERIAL_IDS[mat])
        bobj.append(-1)
        bwin.append(windows)
    cyls, cmat, cobj = [], [], []
    for params, mat in street.static_cylinders:
        cyls.append(params)
        cmat.append(MATERIAL_IDS[mat])
        cobj.append(-1)
    sphs = [p for p, _ in street.static_spheres]
    smat = [MATERIAL_IDS[m] for _, m in street.static_spheres]
    for k, obj in enumerate(street.objects):
        c = obj.centre_at(t)
        cy, sy = np.cos(obj.yaw), np.sin(obj.yaw)
        bottom = c[2] - obj.size[2] / 2
        for kind, p, mat in obj.parts:
            ox, oy = p[0] * cy - p[1] * sy, p[0] * sy + p[1] * cy
            if kind == "box":
                boxes.append(_box(c[0] + ox, c[1] + oy, bottom + p[2], p[3], p[4], p[5], obj.yaw))
                bmat.append(MATERIAL_IDS[mat])
                bobj.append(k)
                bwin.append(False)
            else:
                cyls.append(np.array([c[0] + ox, c[1] + oy, bottom + p[2], p[3], p[4]]))
                cmat.append(MATERIAL_IDS[mat])
                cobj.append(k)
    as2 = lambda a, w: np.array(a, dtype=np.float64).reshape(-1, w)  # noqa: E731
    return (as2(boxes, 7), np.array(bmat, int), np.array(bobj, int), np.array(bwin, bool),
            as2(cyls, 5), np.array(cmat, int), np.array(cobj, int),
            as2(sphs, 4), np.array(smat, int))


@dataclass
class Sweep:
    """One rendered sweep.

    Attributes:
        points: (W * H, 5) float32 ``x, y, z, intensity, ring`` in the lidar frame at the sweep's end,
            ring-major firing order (point ``i`` has ring ``i % H``), metres.
        lidar_pose: (4, 4) lidar -> road frame at the sweep's end.
        hits_per_object: (n_objects,) number of returns on each annotated object.
    """

    points: np.ndarray
    lidar_pose: np.ndarray
    hits_per_object: np.ndarray


def lidar_pose_at(street: Street, t: float, pitch_jitter: float = 0.0, roll_jitter: float = 0.0) -> np.ndarray:
    """Lidar -> road-frame pose (4, 4) at time ``t`` (s): the ego drives along +y (heading ``ego_heading``)
    with the sensor tilted by the ego's pitch and roll (plus per-sweep jitter, rad)."""
    phi = street.ego_heading
    forward = np.array([-np.sin(phi), np.cos(phi), 0.0])
    right = np.array([np.cos(phi), np.sin(phi), 0.0])
    heading = np.stack([right, forward, [0.0, 0.0, 1.0]], axis=1)  # columns: lidar x, y, z
    p, r = street.ego_pitch + pitch_jitter, street.ego_roll + roll_jitter
    pitch = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])  # about lidar x
    roll = np.array([[np.cos(r), 0, np.sin(r)], [0, 1, 0], [-np.sin(r), 0, np.cos(r)]])  # about lidar y
    pose = np.eye(4)
    pose[:3, :3] = heading @ pitch @ roll
    pose[:3, 3] = np.array([street.lane_x, 0.0, street.lidar_height]) + forward * street.ego_speed * t
    return pose


class _ColumnCuller:
    """Cast each primitive only against the azimuth columns it can cover.

    Rays are stored column by column (index = column * n_rings + ring), so the rays of a column span
    are one contiguous slice. A primitive with horizontal bounding radius ``r`` at distance ``D`` from
    the sensor covers azimuths within asin((r + margin) / D) of its centre; ``margin`` covers the
    sensor's own motion during the sweep.
    """

    def __init__(self, o_end, rot, az0: float, step: float, n_rings: int, width: int, margin: float):
        self.o_end, self.rot, self.az0, self.step = o_end, rot, az0, step
        self.n_rings, self.width, self.margin = n_rings, width, margin

    def spans(self, centres_xy: np.ndarray, radii: np.ndarray) -> list[list[slice]]:
        rel = np.zeros((len(centres_xy), 3))
        rel[:, :2] = centres_xy - self.o_end[None, :2]
        local = rel @ self.rot  # road -> lidar frame (rotation only; z is irrelevant for azimuth)
        dist = np.hypot(local[:, 0], local[:, 1])
        az = np.arctan2(local[:, 1], local[:, 0])
        reach = radii + self.margin
        out = []
        for a, dd, r in zip(az, dist, reach):
            if dd <= r * 1.05:
                out.append([slice(0, self.width * self.n_rings)])
                continue
            half = np.arcsin(min(1.0, r / dd)) / self.step + 2
            centre = np.mod(self.az0 - a, 2 * np.pi) / self.step
            c0, c1 = int(np.floor(centre - half)), int(np.ceil(centre + half))
            if c1 - c0 + 1 >= self.width:
                out.append([slice(0, self.width * self.n_rings)])
                continue
            pieces = [(c0, c1)] if 0 <= c0 and c1 < self.width else (
                [(c0 % self.width, self.width - 1), (0, c1 % self.width)] if c0 < 0 else
                [(c0, self.width - 1), (0, c1 - self.width)])
            out.append([slice(a0 * self.n_rings, (b0 + 1) * self.n_rings) for a0, b0 in pieces])
        return out

    def cast(self, fn, origins, dirs, prims, centres_xy, radii):
        """First hit of every ray with ``prims`` through ``fn`` (a ``ray_*`` function), culled by column."""
        n = len(dirs)
        best_t = np.full(n, np.inf)
        best_i = np.full(n, -1, dtype=np.int64)
        for j, pieces in enumerate(self.spans(centres_xy, radii)):
            for sl in pieces:
                t, hit = fn(origins[sl], dirs[sl], prims[j:j + 1])
                better = (hit >= 0) & (t < best_t[sl])
                best_t[sl] = np.where(better, t, best_t[sl])
                best_i[sl] = np.where(better, j, best_i[sl])
        return best_t, best_i


def render_sweep(street: Street, t_end: float, rng: np.random.Generator, sensor: SpinningLidar = HDL32E,
                 view_range: float = 115.0) -> Sweep:
    """Ray-cast one sweep ending at ``t_end`` (s) from the ego of ``street``.

    Returns:
        :class:`Sweep` with the points in the real file's layout (see module docstring).
    """
    n_rings, width = sensor.n_rings, sensor.columns
    pose = lidar_pose_at(street, t_end, rng.normal(0, np.radians(0.2)), rng.normal(0, np.radians(0.15)))
    rot, o_end = pose[:3, :3], pose[:3, 3]
    phi = street.ego_heading
    forward = np.array([-np.sin(phi), np.cos(phi), 0.0])  # direction of travel (horizontal)

    az = np.radians(sensor.start_azimuth_deg + rng.uniform(-0.3, 0.3) - np.arange(width) * sensor.azimuth_step_deg)
    el = np.radians(sensor.elevation_deg + rng.normal(0, 0.02, n_rings))
    az_g, el_g = np.meshgrid(az, el, indexing="ij")  # (W, H): firing order column-major, ring minor
    d_lidar = np.stack([np.cos(el_g) * np.cos(az_g), np.cos(el_g) * np.sin(az_g), np.sin(el_g)], -1).reshape(-1, 3)
    dt_back = (width - 1 - np.arange(width)) * sensor.sweep_s / width  # time before the last column
    origins = o_end[None, :] - np.repeat(dt_back, n_rings)[:, None] * street.ego_speed * forward[None, :]
    d = d_lidar @ rot.T

    boxes, bmat, bobj, bwin, cyls, cmat, cobj, sphs, smat = _primitives(street, t_end)
    def nearby(xy: np.ndarray, extent: np.ndarray) -> np.ndarray:
        gap = np.clip(np.abs(xy - o_end[None, :2]) - extent[:, None], 0, None)
        return np.nonzero(np.hypot(gap[:, 0], gap[:, 1]) < view_range)[0]

    bsel = nearby(boxes[:, :2], boxes[:, 3:5].max(1))
    csel = nearby(cyls[:, :2], cyls[:, 3])
    ssel = nearby(sphs[:, :2], sphs[:, 3])

    n = len(d)
    cull = _ColumnCuller(o_end, rot, az[0], np.radians(sensor.azimuth_step_deg), n_rings, width,
                         margin=street.ego_speed * sensor.sweep_s + 0.5)
    t_g = ray_ground(origins, d)
    t_b, i_b = cull.cast(ray_boxes, origins, d, boxes[bsel], boxes[bsel, :2], np.hypot(boxes[bsel, 3], boxes[bsel, 4]))
    t_c, i_c = cull.cast(ray_cylinders, origins, d, cyls[csel], cyls[csel, :2], cyls[csel, 3])
    t_s, i_s = cull.cast(ray_spheres, origins, d, sphs[ssel], sphs[ssel, :2], sphs[ssel, 3])
    t_all = np.stack([t_g, t_b, t_c, t_s], 1)
    kind = t_all.argmin(1)
    t_hit = t_all[np.arange(n), kind]
    hit = np.isfinite(t_hit)
    q = origins + np.where(hit, t_hit, 0.0)[:, None] * d

    # material, object and surface normal of every hit
    mat = np.full(n, MATERIAL_IDS["asphalt"])
    obj = np.full(n, -1)
    normal = np.tile([0.0, 0.0, 1.0], (n, 1))
    on_ground = hit & (kind == 0)
    lateral = np.abs(q[:, 0])
    grass = on_ground & (lateral > street.road_half_width + street.sidewalk_width)
    mat[grass] = MATERIAL_IDS["grass"]
    marking = on_ground & (lateral < 0.08) & (np.mod(q[:, 1], street.marking_period) < 3.0)
    marking |= on_ground & (np.abs(lateral - (street.road_half_width - 0.3)) < 0.06)
    mat[marking] = MATERIAL_IDS["marking"]
    m = hit & (kind == 1)
    if m.any():
        bi = bsel[i_b[m]]
        mat[m] = bmat[bi]
        obj[m] = bobj[bi]
        normal[m] = box_normals(q[m], boxes[bi])
        win = bwin[bi]
        glass = win & (np.mod(q[m, 2], 3.2) > 1.0) & (np.mod(q[m, 2], 3.2) < 2.4) & (
            np.mod(q[m, 1] + q[m, 0], 3.0) < 1.8)
        mm = mat[m]
        mm[glass] = MATERIAL_IDS["glass"]
        mat[m] = mm
    m = hit & (kind == 2)
    if m.any():
        ci = csel[i_c[m]]
        mat[m] = cmat[ci]
        obj[m] = cobj[ci]
        radial = q[m] - cyls[ci, :3]
        radial[:, 2] = 0
        normal[m] = radial / np.maximum(np.linalg.norm(radial, axis=1, keepdims=True), 1e-9)
    m = hit & (kind == 3)
    if m.any():
        si = ssel[i_s[m]]
        mat[m] = smat[si]
        radial = q[m] - sphs[si, :3]
        normal[m] = radial / np.maximum(np.linalg.norm(radial, axis=1, keepdims=True), 1e-9)

    props = _MAT[mat]
    cos_inc = np.abs((normal * d).sum(1))
    t_ret = t_hit + rng.uniform(0, 1, n) * props[:, 3]  # foliage: returns from inside the crown
    t_ret = t_ret + rng.normal(0, sensor.range_noise_m, n)
    drop = rng.random(n) < props[:, 2]
    drop |= (cos_inc < 0.04) & (rng.random(n) < 0.6)
    drop |= (kind == 0) & (t_hit > 25) & (rng.random(n) < np.clip((t_hit - 25) / 120, 0, 0.5))  # far, dark ground
    valid = hit & ~drop & (t_ret < sensor.max_range_m)
    intensity = np.clip(props[:, 0] * (0.35 + 0.65 * cos_inc) + rng.normal(0, 1, n) * props[:, 1], 0, 255)

    # ego roof, fixed in the lidar frame (seen through the unrotated firing directions)
    t_roof, _ = ray_boxes(np.zeros((n, 3)), d_lidar, _ROOF)
    roof = np.isfinite(t_roof) & (~valid | (t_roof < t_ret))
    t_ret = np.where(roof, t_roof + rng.normal(0, 0.005, n), t_ret)
    intensity = np.where(roof, np.clip(rng.normal(*MATERIALS["roof"][:2], n), 0, 255), intensity)
    valid |= roof

    # points in the firing-time lidar frame; no return = (0, 0, 0) as the sensor writes it
    p_fire = np.where(valid[:, None], t_ret[:, None] * d_lidar, 0.0)
    intensity = np.where(valid, np.round(intensity), rng.integers(0, 12, n))
    # motion compensation to the last column: p_end = p_fire + R^T (o_fire - o_end)
    p_end = p_fire - np.repeat(dt_back, n_rings)[:, None] * street.ego_speed * (rot.T @ forward)[None, :]
    ring = np.tile(np.arange(n_rings), width)

    counted = valid & ~roof & (obj >= 0)
    hits_per_object = np.bincount(obj[counted], minlength=len(street.objects))
    points = np.concatenate([p_end, intensity[:, None], ring[:, None]], 1).astype(np.float32)
    return Sweep(points=points, lidar_pose=pose, hits_per_object=hits_per_object)
