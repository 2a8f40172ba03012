"""Vectorised ray casting against the primitives of a procedural street (numpy, float64).

All functions take rays as origins ``o`` (N, 3) and unit directions ``d`` (N, 3) in metres and return
the distance ``t`` (N,) to the first hit in front of the origin (``inf`` for a miss) and, where useful,
the index of the primitive hit (-1 for none). Primitives:

* ground: the plane z = 0;
* boxes: centre (x, y, z), half-sizes (hx, hy, hz), yaw about z in rad (slab test, Kay & Kajiya 1986);
* vertical cylinders: base centre (x, y, z0), radius, height (side wall and top cap);
* spheres: centre and radius.

Work is chunked over primitives so memory stays at a few ``N x chunk`` arrays.
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
