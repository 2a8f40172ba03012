"""HDL-32E LiDAR sweeps of a procedural street (:mod:`shards.synthetic.world`), as the real sensor records them.

:func:`render_sweep` ray-casts one sweep from the moving ego: ring-major firing order (point ``i`` has
ring ``i % 32``), column azimuths decreasing from ego-left, the ego moving during the 50 ms sweep and the
points motion-compensated to the last column (so no-return rays, fired as (0, 0, 0), end on a short line
behind the sensor, as in real nuScenes files), ego-roof hits in the lowest rings (the roof patch
``_ROOF``, fixed in the lidar frame), range noise, dropouts on glass and at grazing incidence, porous
foliage, and a 105 m maximum range. :func:`lidar_pose_at` gives the sensor's pose in the road frame at
a time, :class:`_ColumnCuller` keeps the ray casting to the azimuth columns each primitive can cover, and
:class:`Sweep` is the result.

Everything is deterministic given the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolkit.lidar.sensors import HDL32E, SpinningLidar

from .raycast import box_normals, ray_boxes, ray_cylinders, ray_ground, ray_spheres
from .world import MATERIAL_IDS, MATERIALS, Street, _primitives, ground_material, window_glass

# per material id: (intensity mean, intensity std, dropout probability, foliage penetration depth m)
_MAT = np.array(list(MATERIALS.values()), dtype=np.float64)

# Ego-roof patch under the sensor, in the lidar frame (x right, y forward, z up), as boxes
# (cx, cy, cz, hx, hy, hz, yaw). The real sweep has roof hits at 0.4-1.0 m in rings 0-10.
_ROOF = np.array([
    [0.0, -0.2, -0.9, 0.56, 0.76, 0.55, 0.0],    # roof top at z = -0.35 m
    [0.0, 0.0, -0.45, 0.22, 0.22, 0.2, 0.0],     # sensor mount, top at z = -0.25 m
])


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
    mat[on_ground] = ground_material(street, q[on_ground, 0], q[on_ground, 1])
    m = hit & (kind == 1)
    if m.any():
        bi = bsel[i_b[m]]
        mat[m] = bmat[bi]
        obj[m] = bobj[bi]
        normal[m] = box_normals(q[m], boxes[bi])
        glass = bwin[bi] & window_glass(q[m, 0], q[m, 1], q[m, 2])
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
