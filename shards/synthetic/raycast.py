"""Vectorised ray casting against the primitives of a procedural street (numpy, float64).

All functions take rays as origins ``o`` (N, 3) and unit directions ``d`` (N, 3) in metres and return
the distance ``t`` (N,) to the first hit in front of the origin (``inf`` for a miss) and, where useful,
the index of the primitive hit (-1 for none). Primitives:

* ground: the plane z = 0;
* boxes: centre (x, y, z), half-sizes (hx, hy, hz), yaw about z in rad (slab test, Kay & Kajiya 1986);
* vertical cylinders: base centre (x, y, z0), radius, height (side wall and top cap);
* spheres: centre and radius.

Work is chunked over primitives so memory stays at a few ``N x chunk`` arrays.

Two specialisations serve the cameras (:mod:`shards.synthetic.camera_render`), with the same hit rules
as the general functions so cameras and LiDAR see the same surfaces:

* ``*_from_point``: many rays from ONE origin (a pinhole) against ONE primitive; directions are given as
  three same-shape float32 component arrays (e.g. a screen rectangle of an image), so the origin's
  terms are scalars and nothing is broadcast per ray;
* ``*_blocks``: many origins along ONE direction (shadow rays toward the sun) against ONE primitive;
  they answer only whether anything is hit in front of the origin.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-6
_CHUNK = 24


def _keep_nearest(best_t: np.ndarray, best_i: np.ndarray, t: np.ndarray, start: int) -> None:
    """Update the running first hit (in place) with a chunk of (N, chunk) distances whose first
    primitive has index ``start``."""
    j = t.argmin(axis=1)
    tj = t[np.arange(len(t)), j].astype(np.float64)
    better = tj < best_t
    best_t[better] = tj[better]
    best_i[better] = start + j[better]


def ray_ground(o: np.ndarray, d: np.ndarray, z: float = 0.0) -> np.ndarray:
    """Distance to the horizontal plane ``z`` (inf where the ray points away or is parallel)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (z - o[:, 2]) / d[:, 2]
    return np.where((t > _EPS) & np.isfinite(t), t, np.inf)


def ray_boxes(o: np.ndarray, d: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First hit of each ray with a set of yawed boxes.

    Args:
        o, d: (N, 3) ray origins and unit directions.
        boxes: (M, 7) rows ``cx, cy, cz, hx, hy, hz, yaw`` (half-sizes in m, yaw in rad).

    Returns:
        t (N,) distance (inf = miss) and idx (N,) int64 index of the box hit (-1 = miss).
    """
    n = len(o)
    best_t = np.full(n, np.inf)
    best_i = np.full(n, -1, dtype=np.int64)
    o32, d32 = o.astype(np.float32), d.astype(np.float32)
    for start in range(0, len(boxes), _CHUNK):
        b = boxes[start:start + _CHUNK].astype(np.float32)
        c, s = np.cos(b[:, 6]), np.sin(b[:, 6])
        rx = o32[:, None, 0] - b[None, :, 0]
        ry = o32[:, None, 1] - b[None, :, 1]
        # world -> box frame (rotate by -yaw), one axis at a time to keep temporaries small
        local = (c * rx + s * ry, -s * rx + c * ry, o32[:, None, 2] - b[None, :, 2])
        dirs = (c * d32[:, None, 0] + s * d32[:, None, 1], -s * d32[:, None, 0] + c * d32[:, None, 1],
                np.broadcast_to(d32[:, None, 2], rx.shape))
        tmin = tmax = None
        for axis in range(3):
            dd = dirs[axis]
            inv = 1.0 / np.where(np.abs(dd) < 1e-9, np.float32(1e-9), dd)
            t1 = (-b[None, :, 3 + axis] - local[axis]) * inv
            t2 = (b[None, :, 3 + axis] - local[axis]) * inv
            lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
            tmin = lo if tmin is None else np.maximum(tmin, lo)
            tmax = hi if tmax is None else np.minimum(tmax, hi)
        t = np.where((tmax >= tmin) & (tmin > _EPS), tmin, np.float32(np.inf))
        _keep_nearest(best_t, best_i, t, start)
    return best_t, best_i


def ray_cylinders(o: np.ndarray, d: np.ndarray, cyl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First hit with vertical cylinders.

    Args:
        cyl: (M, 5) rows ``x, y, z0, radius, height``.

    Returns:
        t (N,), idx (N,) as :func:`ray_boxes`.
    """
    n = len(o)
    best_t = np.full(n, np.inf)
    best_i = np.full(n, -1, dtype=np.int64)
    for start in range(0, len(cyl), _CHUNK):
        cc = cyl[start:start + _CHUNK]
        ox = o[:, None, 0] - cc[None, :, 0]
        oy = o[:, None, 1] - cc[None, :, 1]
        dx, dy = d[:, None, 0], d[:, None, 1]
        a = dx * dx + dy * dy
        bq = 2 * (ox * dx + oy * dy)
        cq = ox * ox + oy * oy - cc[None, :, 3] ** 2
        disc = bq * bq - 4 * a * cq
        with np.errstate(invalid="ignore", divide="ignore"):
            sq = np.sqrt(np.maximum(disc, 0))
            t_side = (-bq - sq) / (2 * a)
        z = o[:, None, 2] + t_side * d[:, None, 2]
        side_ok = (disc >= 0) & (t_side > _EPS) & (z >= cc[None, :, 2]) & (z <= cc[None, :, 2] + cc[None, :, 4])
        t_side = np.where(side_ok, t_side, np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_cap = (cc[None, :, 2] + cc[None, :, 4] - o[:, None, 2]) / d[:, None, 2]
            px = ox + t_cap * dx
            py = oy + t_cap * dy
        cap_ok = (t_cap > _EPS) & (px * px + py * py <= cc[None, :, 3] ** 2)
        t = np.minimum(t_side, np.where(cap_ok, t_cap, np.inf))
        _keep_nearest(best_t, best_i, t, start)
    return best_t, best_i


def ray_spheres(o: np.ndarray, d: np.ndarray, sph: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First hit with spheres.

    Args:
        sph: (M, 4) rows ``x, y, z, radius``.

    Returns:
        t (N,), idx (N,) as :func:`ray_boxes`.
    """
    n = len(o)
    best_t = np.full(n, np.inf)
    best_i = np.full(n, -1, dtype=np.int64)
    for start in range(0, len(sph), _CHUNK):
        s = sph[start:start + _CHUNK]
        oc = o[:, None, :] - s[None, :, :3]
        b = (oc * d[:, None, :]).sum(-1)
        c = (oc * oc).sum(-1) - s[None, :, 3] ** 2
        disc = b * b - c
        t = -b - np.sqrt(np.maximum(disc, 0))
        t = np.where((disc >= 0) & (t > _EPS), t, np.inf)
        _keep_nearest(best_t, best_i, t, start)
    return best_t, best_i


def box_normals(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Outward unit normal of the box face nearest to each hit point.

    Args:
        points: (N, 3) hit points; boxes: (N, 7) the box each point hit.
    """
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    rel = points[:, :2] - boxes[:, :2]
    local = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], points[:, 2] - boxes[:, 2]], 1)
    gap = np.abs(np.abs(local) - boxes[:, 3:6])
    axis = gap.argmin(1)
    n_local = np.zeros_like(local)
    n_local[np.arange(len(local)), axis] = np.sign(local[np.arange(len(local)), axis])
    return np.stack([c * n_local[:, 0] - s * n_local[:, 1], s * n_local[:, 0] + c * n_local[:, 1], n_local[:, 2]], 1)


def _f32(x) -> np.float32:
    return np.float32(x)


def ray_box_from_point(o, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, box, inv_dz: np.ndarray | None = None
                       ) -> np.ndarray:
    """First hit of rays from one origin with one yawed box (the rule of :func:`ray_boxes`).

    Args:
        o: (3,) ray origin, m.
        dx, dy, dz: same-shape float32 arrays, the ray directions' components (unit or not: ``t`` is in
            units of the direction's length).
        box: (7,) ``cx, cy, cz, hx, hy, hz, yaw`` (m, rad).
        inv_dz: optional precomputed ``1 / dz`` (the z component does not depend on the box's yaw).

    Returns:
        float32 array of the shape of ``dx``: distance to the first hit in front of ``o``, inf = miss.
    """
    c, s = np.cos(box[6]), np.sin(box[6])
    rx, ry = o[0] - box[0], o[1] - box[1]
    local = (c * rx + s * ry, -s * rx + c * ry, o[2] - box[2])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lx = _f32(c) * dx + _f32(s) * dy
        ly = _f32(-s) * dx + _f32(c) * dy
        invs = (1.0 / lx, 1.0 / ly, 1.0 / dz if inv_dz is None else inv_dz)
        tmin = tmax = None
        for axis in range(3):
            t1 = _f32(-box[3 + axis] - local[axis]) * invs[axis]
            t2 = _f32(box[3 + axis] - local[axis]) * invs[axis]
            lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
            tmin = lo if tmin is None else np.maximum(tmin, lo, out=tmin)
            tmax = hi if tmax is None else np.minimum(tmax, hi, out=tmax)
        return np.where((tmax >= tmin) & (tmin > _EPS), tmin, np.float32(np.inf))


def ray_cylinder_from_point(o, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, cyl, a: np.ndarray | None = None
                            ) -> np.ndarray:
    """First hit of rays from one origin with one vertical cylinder (side wall and top cap, the rule of
    :func:`ray_cylinders`).

    Args:
        o: (3,) origin, m; dx, dy, dz: same-shape float32 direction components.
        cyl: (5,) ``x, y, z0, radius, height`` (m).
        a: optional precomputed ``dx**2 + dy**2``.

    Returns:
        float32 distance array of the shape of ``dx`` (inf = miss).
    """
    ox, oy = o[0] - cyl[0], o[1] - cyl[1]
    z0, z1, r2 = cyl[2], cyl[2] + cyl[4], cyl[3] ** 2
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        a = dx * dx + dy * dy if a is None else a
        bq = _f32(2 * ox) * dx + _f32(2 * oy) * dy
        disc = bq * bq - _f32(4 * (ox * ox + oy * oy - r2)) * a
        t_side = (-bq - np.sqrt(np.maximum(disc, 0))) / (2 * a)
        z = _f32(o[2]) + t_side * dz
        t_side = np.where((disc >= 0) & (t_side > _EPS) & (z >= z0) & (z <= z1), t_side, np.float32(np.inf))
        t_cap = _f32(z1 - o[2]) / dz
        px, py = _f32(ox) + t_cap * dx, _f32(oy) + t_cap * dy
        cap_ok = (t_cap > _EPS) & (px * px + py * py <= r2)
        return np.minimum(t_side, np.where(cap_ok, t_cap, np.float32(np.inf)))


def ray_sphere_from_point(o, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, sph) -> np.ndarray:
    """First hit of rays from one origin with one sphere (the rule of :func:`ray_spheres`).

    Args:
        o: (3,) origin, m; dx, dy, dz: same-shape float32 components of UNIT directions.
        sph: (4,) ``x, y, z, radius`` (m).

    Returns:
        float32 distance array of the shape of ``dx`` (inf = miss; an origin inside the sphere misses).
    """
    oc = np.asarray(o, np.float64) - np.asarray(sph[:3], np.float64)
    cq = _f32(oc @ oc - sph[3] ** 2)
    b = _f32(oc[0]) * dx + _f32(oc[1]) * dy + _f32(oc[2]) * dz
    disc = b * b - cq
    t = -b - np.sqrt(np.maximum(disc, 0))
    return np.where((disc >= 0) & (t > _EPS), t, np.float32(np.inf))


def box_blocks(p: np.ndarray, d, box) -> np.ndarray:
    """Whether rays from many origins along one direction hit one yawed box in front of their origin.

    Args:
        p: (N, 3) origins, m; d: (3,) unit direction; box: (7,) as :func:`ray_boxes`.

    Returns:
        (N,) bool; an origin inside the box counts as blocked.
    """
    c, s = np.cos(box[6]), np.sin(box[6])
    rx, ry = p[:, 0] - box[0], p[:, 1] - box[1]
    local = (c * rx + s * ry, -s * rx + c * ry, p[:, 2] - box[2])
    ld = (c * d[0] + s * d[1], -s * d[0] + c * d[1], d[2])
    tmin = np.full(len(p), -np.inf)
    tmax = np.full(len(p), np.inf)
    for axis in range(3):
        if abs(ld[axis]) < 1e-12:  # parallel to this slab: inside it or never
            inside = np.abs(local[axis]) <= box[3 + axis]
            tmax = np.where(inside, tmax, -np.inf)
            continue
        t1 = (-box[3 + axis] - local[axis]) / ld[axis]
        t2 = (box[3 + axis] - local[axis]) / ld[axis]
        tmin = np.maximum(tmin, np.minimum(t1, t2))
        tmax = np.minimum(tmax, np.maximum(t1, t2))
    return (tmax >= tmin) & (tmax > _EPS)


def cylinder_blocks(p: np.ndarray, d, cyl) -> np.ndarray:
    """As :func:`box_blocks` for one vertical cylinder (5,) ``x, y, z0, radius, height`` (solid, capped)."""
    ox, oy = p[:, 0] - cyl[0], p[:, 1] - cyl[1]
    a = d[0] ** 2 + d[1] ** 2
    if a < 1e-12:  # vertical ray: inside the disc and below the top
        return (ox * ox + oy * oy <= cyl[3] ** 2) & (p[:, 2] < cyl[2] + cyl[4]) & (
            (p[:, 2] >= cyl[2]) | (d[2] > 0))
    b = ox * d[0] + oy * d[1]
    disc = b * b - a * (ox * ox + oy * oy - cyl[3] ** 2)
    sq = np.sqrt(np.maximum(disc, 0))
    t_in, t_out = (-b - sq) / a, (-b + sq) / a
    if abs(d[2]) < 1e-12:
        inside = (p[:, 2] >= cyl[2]) & (p[:, 2] <= cyl[2] + cyl[4])
        z_in, z_out = np.where(inside, -np.inf, np.inf), np.where(inside, np.inf, -np.inf)
    else:
        t1, t2 = (cyl[2] - p[:, 2]) / d[2], (cyl[2] + cyl[4] - p[:, 2]) / d[2]
        z_in, z_out = np.minimum(t1, t2), np.maximum(t1, t2)
    lo, hi = np.maximum(t_in, z_in), np.minimum(t_out, z_out)
    return (disc >= 0) & (hi >= lo) & (hi > _EPS)


def sphere_blocks(p: np.ndarray, d, sph) -> np.ndarray:
    """As :func:`box_blocks` for one sphere (4,) ``x, y, z, radius``."""
    oc = p - np.asarray(sph[:3])[None, :]
    b = oc[:, 0] * d[0] + oc[:, 1] * d[1] + oc[:, 2] * d[2]
    disc = b * b - ((oc * oc).sum(1) - sph[3] ** 2)
    return (disc >= 0) & (-b + np.sqrt(np.maximum(disc, 0)) > _EPS)
