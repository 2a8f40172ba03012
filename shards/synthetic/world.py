"""The procedural street world: geometry, materials and annotated objects, independent of any sensor.

A :class:`Street` is built in a *road frame*: the road runs along +y, x is lateral, z up, ground at
z = 0. It holds ground and lane markings, kerbs and sidewalks, building walls with windows, fences
and hedges, poles and trees (static), and vehicles, pedestrians, barriers and cones (annotated
objects, some moving, see :class:`StreetObject`). :func:`build_street` generates one;
:func:`_primitives` flattens it at a time ``t`` into the box / cylinder / sphere arrays the ray casters
of :mod:`shards.synthetic.raycast` take, with a material and object id per primitive.

Every surface names a material (``MATERIALS``); its entry holds the surface's LiDAR response (intensity,
dropout, foliage penetration), looked up by the sensor models through ``MATERIAL_IDS``. The rig facts
of the ego vehicle (where LIDAR_TOP is mounted, as in nuScenes) are here too, because the street is
generated around the sensor height. Sensors live in their own modules and import this one, never the
reverse: :mod:`shards.synthetic.lidar_sweep` renders HDL-32E sweeps of a street and
:mod:`shards.synthetic.camera_render` pinhole images of the same world; :func:`ground_material` and
:func:`window_glass` are the lane-marking and window rules both apply (the LiDAR's copy is inline in
``render_sweep``).

Everything is deterministic given the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# name -> LiDAR response: (intensity mean, intensity std, dropout probability, foliage penetration depth m)
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

PARKING_STRIP_M = 2.0  # width of a kerbside parking strip
MIN_LANE_M = 2.75      # narrowest travel lane a parking strip may leave

# nuScenes lidar -> ego mounting (LIDAR_TOP): 0.94 m ahead of the rear axle, 1.84 m up, yaw -90 deg
LIDAR_IN_EGO_T = np.array([0.943713, 0.0, 1.84023])
LIDAR_IN_EGO_Q = np.array([np.cos(-np.pi / 4), 0.0, 0.0, np.sin(-np.pi / 4)])  # w, x, y, z


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
    lane_offsets: dict = field(default_factory=dict)  # side (-1.0 / 1.0) -> |x| of that side's lane centre, m
    parking: dict = field(default_factory=dict)       # side -> has a parking strip along its kerb


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

    The carriageway (half width ``road_half_width``, centre line at x = 0) has one travel lane per side and,
    on each side where it leaves a travel lane of at least ``MIN_LANE_M``, usually a ``PARKING_STRIP_M``
    parking strip along the kerb (where a parked car then clears the lane); travel lanes are centred between the
    centre line and the strip (``Street.lane_offsets``). A side without a strip has off-street parking lots
    instead (:func:`_parking_lots`), so every street has parked vehicles near the ego as nuScenes' streets do
    (``tests/test_synthetic_density.py``: at least 5 vehicle annotations within 50 m at every keyframe).

    Returns:
        Street in the road frame; the ego starts at y = 0 in lane x = ``lane_x``.
    """
    half = rng.uniform(3.5, 8.5)
    side = float(rng.choice([-1.0, 1.0]))  # which side of the road the ego drives on
    # a strip only where it leaves a MIN_LANE_M lane and a 2 m wide car parked 0.25 m from the kerb stays clear
    # of that lane by the margin _parked_vehicles keeps (else the strip stays empty: the side parks off-street)
    fits = half - PARKING_STRIP_M >= MIN_LANE_M and half - 2.25 >= (half - PARKING_STRIP_M) / 2 + 1.35
    parking = {s: bool(rng.random() < 0.85) and fits for s in (-1.0, 1.0)}
    offsets = {s: (half - PARKING_STRIP_M * parking[s]) / 2 for s in (-1.0, 1.0)}
    lane_x = side * offsets[side] + rng.normal(0, 0.2)
    speed = 0.0 if rng.random() < 0.12 else rng.uniform(3.0, 13.0)
    street = Street(road_half_width=half, lane_x=lane_x, ego_speed=speed,
                    ego_heading=rng.normal(0, np.radians(1.5)), length=route_length,
                    kerb_height=rng.uniform(0.1, 0.22), sidewalk_width=rng.uniform(1.5, 5.0),
                    marking_period=rng.uniform(6, 12), ego_pitch=rng.normal(0, np.radians(0.7)),
                    ego_roll=rng.normal(0, np.radians(0.5)), leafy=rng.uniform(0.2, 1.0),
                    lidar_height=LIDAR_IN_EGO_T[2] + rng.normal(0, 0.03), lane_offsets=offsets, parking=parking)
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
        # a side without a kerbside strip parks its cars off the street, in lots between the buildings
        lots = [] if street.parking[s] else _parking_lots(rng, street, s, y0, y1, free)
        _frontage(rng, street, s, y0, y1, lambda ya, yb, lots=lots: free(ya, yb) and all(yb < a or ya > b
                                                                                          for a, b in lots))
        _street_furniture(rng, street, s, y0, y1, free)
    works = _construction(rng, street, route_length)
    _parked_vehicles(rng, street, y0, y1, lambda s, ya, yb: free(ya, yb) and not (
        works and works[0] == s and yb > works[1] - 1 and ya < works[2] + 1))
    _traffic(rng, street, side, y0, y1)
    _pedestrians(rng, street, y0, y1)
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


def _parking_lots(rng, street: Street, s: float, y0: float, y1: float, free) -> list[tuple[float, float]]:
    """Off-street parking on side ``s``: surface lots behind the sidewalk, 12-40 m long, 5-30 m apart, with a
    row of cars and vans parked nose-in (perpendicular to the street) in 2.7 m bays, about 75 % occupied.
    Streets too narrow for a kerbside strip are where nuScenes' cities park off-street; without these lots
    such streets had only their moving traffic (2-4 vehicles within 50 m of the ego against about 11 in
    nuScenes). Returns the lots' ``(y_start, y_end)`` spans (kept free of buildings)."""
    x_front = street.road_half_width + street.sidewalk_width
    lots = []
    y = y0 + rng.uniform(0, 20)
    while y < y1:
        length = rng.uniform(12, 40)
        if free(y, y + length):
            lots.append((y, y + length))
            for cy in np.arange(y + 1.35, y + length - 1.3, 2.7):
                if rng.random() < 0.75:
                    v = _vehicle(rng, rng.choice(["vehicle.car"] * 4 + ["van"]), 0.0, float(cy),
                                 0.0 if rng.random() < 0.5 else np.pi, (0.0, 0.0), "vehicle.parked")
                    v.centre[0] = s * (x_front + rng.uniform(0.6, 1.5) + v.size[0] / 2)
                    v.yaw += rng.normal(0, 0.05)
                    street.objects.append(v)
        y += length + rng.uniform(5, 30)
    return lots


def _parked_vehicles(rng, street: Street, y0: float, y1: float, free) -> None:
    """Cars, vans and trucks parked along the kerb in each side's parking strip (none where the side has
    no strip), mostly bumper to bumper with a few longer gaps; a vehicle is left out where it would reach
    into a travel lane (its inner edge within 1.35 m, half the widest vehicle's width, of the lane centre)."""
    half = street.road_half_width
    for s in (-1.0, 1.0):
        if not street.parking[s]:
            continue
        y = y0 + rng.uniform(0, 8)
        while y < y1:
            cat = rng.choice(["vehicle.car", "vehicle.car", "vehicle.car", "van", "vehicle.truck"])
            v = _vehicle(rng, cat, 0.0, 0.0, 0.0, (0, 0), "vehicle.parked")
            if free(s, y - 1, y + v.size[0] + 1):
                x = s * (half - v.size[1] / 2 - rng.uniform(0.1, 0.4))
                v.centre[:2] = (x, y + v.size[0] / 2)
                v.yaw = np.pi / 2 + rng.normal(0, 0.04) + (np.pi if rng.random() < 0.5 else 0.0)
                if abs(x) - v.size[1] / 2 >= street.lane_offsets[s] + 1.35:
                    street.objects.append(v)
            gap = rng.choice(3, p=[0.65, 0.25, 0.1])
            y += v.size[0] + rng.uniform(*[(0.8, 5.0), (5.0, 15.0), (15.0, 40.0)][gap])


def _traffic(rng, street: Street, side: float, y0: float, y1: float) -> None:
    """Moving vehicles: a platoon in the other lane (one direction and speed for the whole lane, so
    vehicles keep their gaps; long enough to fill the street for the whole drive) and possibly a lead
    vehicle ahead of and a follower behind the ego in its own lane, at the ego's speed."""
    speed = street.ego_speed
    other_x = -side * street.lane_offsets[-side]
    direction = -side if rng.random() < 0.85 else side
    lane_speed = rng.uniform(3, 14)
    reach = lane_speed * street.length / 13.0 + 20.0  # how far the platoon moves during the drive (13 m/s route)
    y = y0 - reach + rng.uniform(0, 30)
    while y < y1 + reach:
        cat = rng.choice(["vehicle.car", "vehicle.car", "vehicle.car", "van", "vehicle.truck", "vehicle.bus.rigid"])
        v = _vehicle(rng, cat, other_x + rng.normal(0, 0.15), 0.0,
                     np.pi / 2 if direction * side > 0 else -np.pi / 2, (0.0, direction * side * lane_speed),
                     "vehicle.moving")
        v.centre[1] = y + v.size[0] / 2
        street.objects.append(v)
        y += v.size[0] + rng.uniform(4, 60)
    if speed > 0:
        if rng.random() < 0.6:
            street.objects.append(_vehicle(rng, rng.choice(["vehicle.car", "van", "vehicle.truck"]), street.lane_x,
                                           rng.uniform(9, 35), np.pi / 2, (0.0, speed), "vehicle.moving"))
        if rng.random() < 0.5:
            v = _vehicle(rng, rng.choice(["vehicle.car", "vehicle.car", "van"]), street.lane_x, 0.0, np.pi / 2,
                         (0.0, speed), "vehicle.moving")
            v.centre[1] = -1.2 - rng.uniform(5, 30) - v.size[0] / 2  # the ego's rear bumper is ~1 m behind y = 0
            street.objects.append(v)


def _pedestrians(rng, street: Street, y0: float, y1: float) -> None:
    half = street.road_half_width
    for _ in range(rng.integers(0, 25)):
        s = rng.choice([-1.0, 1.0])
        x = s * (half + rng.uniform(0.5, street.sidewalk_width - 0.3))
        vel = (0.0, rng.choice([-1, 1]) * rng.uniform(0.8, 1.6)) if rng.random() < 0.6 else (0.0, 0.0)
        ped = _pedestrian(rng, x, rng.uniform(y0, y1), vel)
        ped.centre[2] += street.kerb_height
        street.objects.append(ped)


def _construction(rng, street: Street, route_length: float) -> tuple | None:
    """Sometimes a construction zone: barriers and cones along one kerb.

    Returns:
        ``(side, y_start, y_end)`` of the zone (m, road frame) or None.
    """
    if rng.random() >= 0.3:
        return None
    half = street.road_half_width
    s = float(rng.choice([-1.0, 1.0]))
    ys = rng.uniform(0, max(route_length, 30))
    n = int(rng.integers(3, 12))
    for k in range(n):
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
    return s, ys - 1.0, ys + (n - 1) * 2.1 + 1.0


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


def ground_material(street: Street, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Material id (``MATERIAL_IDS``) of ground points (z = 0) at road-frame ``x, y`` (m), the rule the LiDAR
    applies (:func:`shards.synthetic.lidar_sweep.render_sweep`): grass beyond the sidewalks, a dashed centre
    line (16 cm wide, 3 m dashes every ``marking_period``), solid 12 cm edge lines 0.3 m inside the kerbs,
    asphalt elsewhere.

    Returns:
        (N,) int64 material ids.
    """
    lateral = np.abs(x)
    mat = np.full(np.shape(x), MATERIAL_IDS["asphalt"], dtype=np.int64)
    mat[lateral > street.road_half_width + street.sidewalk_width] = MATERIAL_IDS["grass"]
    marking = (lateral < 0.08) & (np.mod(y, street.marking_period) < 3.0)
    marking |= np.abs(lateral - (street.road_half_width - 0.3)) < 0.06
    mat[marking] = MATERIAL_IDS["marking"]
    return mat


def window_glass(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Whether points on a windowed building wall (road frame, m) are window glass, the LiDAR's rule:
    1.4 m tall windows every 3.2 m floor, 1.8 m wide every 3 m along the facade. Returns (N,) bool."""
    zz = np.mod(z, 3.2)
    return (zz > 1.0) & (zz < 2.4) & (np.mod(y + x, 3.0) < 1.8)
