"""Pinhole camera images of a procedural street (:mod:`shards.synthetic.world`) by ray casting.

:func:`render_camera` casts one ray through every pixel centre (pixel ``(row i, column j)`` is the ray
through ``(u, v) = (j, i)``: pixel centres at integer coordinates, as OpenCV, the devkit's drawings and
:data:`toolkit.camera.geometry.PIXEL_EDGE_OFFSET`, so a point projecting to ``(u, v)`` lies in pixel
``(round(v), round(u))``) against
the primitives of :mod:`shards.synthetic.raycast` at the camera's capture time, with the hit rules the
LiDAR uses. It returns the JPEG-ready image and, for checks and labels, the per-pixel object id and
depth buffers and per-object pixel counts (see :class:`CameraFrame`).

Culling: each primitive's bounding box is clipped to the camera's near plane and projected; only the
rays of the screen rectangle around it are cast against it (for a box, the rectangle of its exact
silhouette hull). Static primitives are visited near to far and skipped when everything in their
rectangle is already nearer than they can be. Shadow rays toward the sun are culled the same way in a
plane perpendicular to the sun: the surface points are bucketed on a 1 m grid in that plane, and a
primitive is tested only against the points whose projection along the sun falls in its projected
bounding rectangle and that lie below its top (sun-wise).

Shading: base colours and textures of :mod:`shards.synthetic.appearance`, Lambertian sunlight with cast
shadows, hemispherical sky light darkened under and around objects (contact shadows), clear-coat and
glass reflections of the sky, the sky itself, distance haze, a per-camera exposure and white balance,
a filmic tone curve and sRGB gamma, vignetting and sensor noise. JPEG encoding is left to the caller.

Frames: the street's road frame (x lateral, y along the road, z up, m); the camera frame as nuScenes (x
right, y down, z forward).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .appearance import (CLS_BARRIER, CLS_BUS, CLS_CAR, CLS_CONE, CLS_PED, CLS_TRUCK, SceneLook, ground_albedo,
                         sidewalk_texture, sky_radiance, srgb_to_linear, value_noise, vehicle_albedo, wall_texture)
from .raycast import (box_blocks, box_normals, cylinder_blocks, ray_box_from_point, ray_cylinder_from_point,
                      ray_sphere_from_point, sphere_blocks)
from .world import MATERIAL_IDS, Street, _primitives, ground_material, window_glass

KIND_SKY, KIND_GROUND, KIND_BOX, KIND_CYL, KIND_SPH = 0, 1, 2, 3, 4
_NEAR = 0.05  # m, near plane of the culling
_SHADOW_CELL = 1.0  # m, grid cell of the shadow-ray culling in the plane perpendicular to the sun
_SIGNS = np.array([[(i >> 2 & 1) * 2 - 1, (i >> 1 & 1) * 2 - 1, (i & 1) * 2 - 1] for i in range(8)], np.float64)
_EDGES = np.array([(i, j) for i in range(8) for j in range(i + 1, 8) if bin(i ^ j).count("1") == 1])
M = MATERIAL_IDS
# tone curve 1 - exp(-x) then gamma 1 / 2.2, tabulated over exposed radiance x in [0, 8]
_TONE_MAX, _TONE_STEPS = 8.0, 4096
_TONE_LUT = ((1 - np.exp(-np.linspace(0, _TONE_MAX, _TONE_STEPS + 1))) ** (1 / 2.2)).astype(np.float32)


@dataclass
class CameraFrame:
    """One rendered camera image and its label buffers.

    Attributes:
        channel: camera channel (``CAM_FRONT``, ...).
        image: (H, W, 3) uint8 RGB.
        object_id: (H, W) int32 index into ``street.objects`` of the object seen in each pixel, -1 = none.
        depth: (H, W) float32 camera-frame z of the surface seen, m (inf = sky).
        projected_px: (n_objects,) int64 pixels whose ray hits the object's own geometry when everything
            else is ignored (its silhouette, clipped to the image).
        visible_px: (n_objects,) int64 pixels showing the object (``object_id == k``); <= ``projected_px``.
        camera_to_road: (4, 4) float64 pose of the camera in the road frame at its capture time.
        t: capture time, s (street time).
    """

    channel: str
    image: np.ndarray
    object_id: np.ndarray
    depth: np.ndarray
    projected_px: np.ndarray
    visible_px: np.ndarray
    camera_to_road: np.ndarray
    t: float


def pixel_directions(intrinsic: np.ndarray, width: int, height: int) -> np.ndarray:
    """Unit ray directions through the pixel centres in the camera frame.

    Args:
        intrinsic: (3, 3) pinhole matrix, px (no skew).
        width, height: image size, px.

    Returns:
        (H, W, 3) float32.
    """
    K = np.asarray(intrinsic, np.float64)
    u = (np.arange(width) - K[0, 2]) / K[0, 0]  # pixel centres at integer (u, v)
    v = (np.arange(height) - K[1, 2]) / K[1, 1]
    d = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.ones((height, width))), -1)
    return (d / np.linalg.norm(d, axis=-1, keepdims=True)).astype(np.float32)


def _bounding_corners(boxes: np.ndarray, cyls: np.ndarray, sphs: np.ndarray) -> np.ndarray:
    """(Mb + Mc + Ms, 8, 3) corners of every primitive's bounding box (the box itself for boxes), road frame."""
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    loc = _SIGNS[None] * boxes[:, None, 3:6]
    bx = np.stack([boxes[:, None, 0] + c[:, None] * loc[..., 0] - s[:, None] * loc[..., 1],
                   boxes[:, None, 1] + s[:, None] * loc[..., 0] + c[:, None] * loc[..., 1],
                   boxes[:, None, 2] + loc[..., 2]], -1)
    cyl_c = np.stack([cyls[:, 0], cyls[:, 1], cyls[:, 2] + cyls[:, 4] / 2], 1)
    cyl_h = np.stack([cyls[:, 3], cyls[:, 3], cyls[:, 4] / 2], 1)
    cy = cyl_c[:, None] + _SIGNS[None] * cyl_h[:, None]
    sp = sphs[:, None, :3] + _SIGNS[None] * sphs[:, None, 3:4]
    return np.concatenate([bx.reshape(-1, 8, 3), cy.reshape(-1, 8, 3), sp.reshape(-1, 8, 3)], 0)


def screen_rects(corners_cam: np.ndarray, intrinsic: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel rectangles covering convex bodies given by their 8 corners in the camera frame.

    Each body is clipped to the near plane z = 0.05 m (its vertices in front plus its edges' crossings of
    the plane), projected, and the pixels whose centres lie in the projected bounds (plus one pixel of
    margin) kept, clipped to the image.

    Args:
        corners_cam: (M, 8, 3) corners (index ``4 bx + 2 by + bz`` for a box's sign bits), m.
        intrinsic: (3, 3) pinhole matrix; width, height: image size, px.

    Returns:
        (M, 4) int64 ``row0, row1, col0, col1`` (end exclusive); empty (row1 <= row0 or col1 <= col0) for
        bodies entirely behind the near plane or outside the image.
    """
    K = intrinsic
    a, b = corners_cam[:, _EDGES[:, 0]], corners_cam[:, _EDGES[:, 1]]
    za, zb = a[..., 2] - _NEAR, b[..., 2] - _NEAR
    cross = za * zb < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(cross, za / (za - zb), 0.0)
    pts = np.concatenate([corners_cam, a + f[..., None] * (b - a)], 1)
    valid = np.concatenate([corners_cam[..., 2] >= _NEAR, cross], 1)
    z = np.where(valid, np.maximum(pts[..., 2], _NEAR), 1.0)
    u = K[0, 0] * pts[..., 0] / z + K[0, 2]
    v = K[1, 1] * pts[..., 1] / z + K[1, 2]
    big = 1e7
    umin = np.clip(np.where(valid, u, big).min(1), -big, big)
    umax = np.clip(np.where(valid, u, -big).max(1), -big, big)
    vmin = np.clip(np.where(valid, v, big).min(1), -big, big)
    vmax = np.clip(np.where(valid, v, -big).max(1), -big, big)
    c0 = np.clip(np.ceil(umin) - 1, 0, width)
    c1 = np.clip(np.floor(umax) + 2, 0, width)
    r0 = np.clip(np.ceil(vmin) - 1, 0, height)
    r1 = np.clip(np.floor(vmax) + 2, 0, height)
    out = np.stack([r0, r1, c0, c1], 1).astype(np.int64)
    out[~valid.any(1)] = 0
    return out


def dot3(a: np.ndarray, v) -> np.ndarray:
    """Row-wise dot product of (N, 3) ``a`` with a (3,) vector, elementwise (no BLAS threads), in ``a``'s dtype."""
    v = np.asarray(v, a.dtype)
    return a[:, 0] * v[0] + a[:, 1] * v[1] + a[:, 2] * v[2]


def _sun_basis(sun: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    e1 = np.cross(sun, [0.0, 0.0, 1.0])
    e1 = e1 / np.linalg.norm(e1) if np.linalg.norm(e1) > 1e-6 else np.array([1.0, 0.0, 0.0])
    return e1, np.cross(sun, e1)


def shadowed(points: np.ndarray, sun: np.ndarray, boxes: np.ndarray, cyls: np.ndarray, sphs: np.ndarray,
             corners: np.ndarray | None = None) -> np.ndarray:
    """Which points are in shadow: the ray from each point toward the sun hits a primitive.

    Culled in the plane perpendicular to the sun (module docstring).

    Args:
        points: (N, 3) ray origins (already offset off their surfaces), road frame, m.
        sun: (3,) unit vector toward the sun.
        boxes, cyls, sphs: primitive arrays as :func:`shards.synthetic.world._primitives` returns them.
        corners: their :func:`_bounding_corners` if already computed.

    Returns:
        (N,) bool.
    """
    out = np.zeros(len(points), bool)
    if not len(points):
        return out
    corners = _bounding_corners(boxes, cyls, sphs) if corners is None else corners
    e1, e2 = _sun_basis(sun)
    pa, pb, ph = dot3(points, e1), dot3(points, e2), dot3(points, sun)
    # points bucketed on a grid of _SHADOW_CELL m cells in the sun plane, sorted by cell (row-major)
    amin, bmin = pa.min(), pb.min()
    ia = ((pa - amin) / _SHADOW_CELL).astype(np.int64)
    ib = ((pb - bmin) / _SHADOW_CELL).astype(np.int64)
    na, nb_cells = int(ia.max()) + 1, int(ib.max()) + 1
    key = ia * nb_cells + ib
    order = np.argsort(key, kind="stable")
    key_sorted = key[order]
    ca, cb, ch = corners @ e1, corners @ e2, corners @ sun
    a0, a1, b0, b1, htop = ca.min(1), ca.max(1), cb.min(1), cb.max(1), ch.max(1)
    keep = (a1 >= amin) & (a0 <= pa.max()) & (b1 >= bmin) & (b0 <= pb.max()) & (htop > ph.min())
    r0 = np.clip(np.floor((a0 - amin) / _SHADOW_CELL), 0, na - 1).astype(np.int64)
    r1 = np.clip(np.floor((a1 - amin) / _SHADOW_CELL), 0, na - 1).astype(np.int64)
    q0 = np.clip(np.floor((b0 - bmin) / _SHADOW_CELL), 0, nb_cells - 1).astype(np.int64)
    q1 = np.clip(np.floor((b1 - bmin) / _SHADOW_CELL), 0, nb_cells - 1).astype(np.int64)
    n_box, n_cyl = len(boxes), len(cyls)
    for j in np.nonzero(keep)[0]:
        rows = np.arange(r0[j], r1[j] + 1) * nb_cells
        lo = np.searchsorted(key_sorted, rows + q0[j], "left")
        hi = np.searchsorted(key_sorted, rows + q1[j], "right")
        spans = [order[x:y] for x, y in zip(lo.tolist(), hi.tolist()) if y > x]
        if not spans:
            continue
        cand = np.concatenate(spans) if len(spans) > 1 else spans[0]
        cand = cand[(pa[cand] >= a0[j]) & (pa[cand] <= a1[j]) & (pb[cand] >= b0[j]) & (pb[cand] <= b1[j]) &
                    (ph[cand] < htop[j]) & ~out[cand]]
        if not len(cand):
            continue
        if j < n_box:
            hit = box_blocks(points[cand], sun, boxes[j])
        elif j < n_box + n_cyl:
            hit = cylinder_blocks(points[cand], sun, cyls[j - n_box])
        else:
            hit = sphere_blocks(points[cand], sun, sphs[j - n_box - n_cyl])
        out[cand[hit]] = True
    return out


def render_camera(street: Street, look: SceneLook | None, channel: str, intrinsic: np.ndarray, width: int,
                  height: int, camera_to_road: np.ndarray, t: float, rng: np.random.Generator | None = None,
                  directions: np.ndarray | None = None) -> CameraFrame:
    """Render one camera of ``street`` at time ``t``.

    Args:
        street: the world; its moving objects are placed at ``t``.
        look: the scene's appearance; None renders the geometry buffers only (``image`` is then all zero).
        channel: camera channel name (recorded in the result).
        intrinsic: (3, 3) pinhole matrix, px; width, height: image size, px.
        camera_to_road: (4, 4) camera pose in the road frame (camera axes x right, y down, z forward).
        t: capture time, s.
        rng: generator of the sensor noise (None: no noise).
        directions: :func:`pixel_directions` of this camera, if already computed.

    Returns:
        :class:`CameraFrame`.

    Raises:
        ValueError: on a bad image size or intrinsic matrix.
    """
    if int(width) < 1 or int(height) < 1:
        raise ValueError(f"width and height must be positive, got {width} x {height}")
    K = np.asarray(intrinsic, np.float64)
    if K.shape != (3, 3) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"intrinsic must be a (3, 3) pinhole matrix with positive focal lengths, got {K.tolist()}")
    pose = np.asarray(camera_to_road, np.float64)
    rot, o = pose[:3, :3], pose[:3, 3]
    d_cam = pixel_directions(K, width, height) if directions is None else directions
    r32 = rot.astype(np.float32)
    dx, dy, dz = (d_cam[..., 0] * r32[i, 0] + d_cam[..., 1] * r32[i, 1] + d_cam[..., 2] * r32[i, 2] for i in range(3))
    d_road = np.stack([dx, dy, dz], -1)
    with np.errstate(divide="ignore"):
        inv_dz = np.float32(1.0) / dz
    a_xy = dx * dx + dy * dy

    boxes, bmat, bobj, bwin, cyls, cmat, cobj, sphs, smat = _primitives(street, t)
    n_obj = len(street.objects)
    nb, nc = len(boxes), len(cyls)
    corners = _bounding_corners(boxes, cyls, sphs)
    rects = screen_rects((corners - o) @ rot, K, width, height)
    prim_obj = np.concatenate([bobj, cobj, np.full(len(sphs), -1)])
    centre = corners.mean(1)
    radius = np.linalg.norm(corners - centre[:, None], axis=2).max(1)
    near = np.maximum(np.linalg.norm(centre - o, axis=1) - radius, 0.0)

    T = np.full((height, width), np.inf, np.float32)
    kind = np.zeros((height, width), np.int8)
    idx = np.full((height, width), -1, np.int32)
    with np.errstate(divide="ignore", invalid="ignore"):
        tg = np.float32(-o[2]) * inv_dz
    ground = (dz < 0) & (tg > 0)
    T[ground] = tg[ground]
    kind[ground] = KIND_GROUND

    own: dict[int, list] = {}
    nonempty = (rects[:, 1] > rects[:, 0]) & (rects[:, 3] > rects[:, 2])
    objects_first = np.nonzero(nonempty & (prim_obj >= 0))[0]
    statics = np.nonzero(nonempty & (prim_obj < 0))[0]
    for j in np.concatenate([objects_first[np.argsort(near[objects_first], kind="stable")],
                             statics[np.argsort(near[statics], kind="stable")]]):
        r0, r1, c0, c1 = rects[j]
        Tv = T[r0:r1, c0:c1]
        if prim_obj[j] < 0 and near[j] > Tv.max():
            continue  # everything in its rectangle is already nearer
        sx, sy, sz = dx[r0:r1, c0:c1], dy[r0:r1, c0:c1], dz[r0:r1, c0:c1]
        if j < nb:
            tj, k, local = ray_box_from_point(o, sx, sy, sz, boxes[j], inv_dz[r0:r1, c0:c1]), KIND_BOX, j
        elif j < nb + nc:
            local = j - nb
            tj, k = ray_cylinder_from_point(o, sx, sy, sz, cyls[local], a_xy[r0:r1, c0:c1]), KIND_CYL
        else:
            local = j - nb - nc
            tj, k = ray_sphere_from_point(o, sx, sy, sz, sphs[local]), KIND_SPH
        better = tj < Tv
        if prim_obj[j] >= 0:
            own.setdefault(int(prim_obj[j]), []).append((r0, r1, c0, c1, np.isfinite(tj)))
        if better.any():
            np.copyto(Tv, tj, where=better)
            kind[r0:r1, c0:c1][better] = k
            idx[r0:r1, c0:c1][better] = local

    obj_id = np.full((height, width), -1, np.int32)
    on_box, on_cyl = kind == KIND_BOX, kind == KIND_CYL
    obj_id[on_box] = bobj[idx[on_box]]
    obj_id[on_cyl] = cobj[idx[on_cyl]]
    visible = np.bincount(obj_id[obj_id >= 0], minlength=n_obj).astype(np.int64)
    projected = np.zeros(n_obj, np.int64)
    for k_obj, parts in own.items():
        R0, R1 = min(p[0] for p in parts), max(p[1] for p in parts)
        C0, C1 = min(p[2] for p in parts), max(p[3] for p in parts)
        canvas = np.zeros((R1 - R0, C1 - C0), bool)
        for r0, r1, c0, c1, m in parts:
            canvas[r0 - R0:r1 - R0, c0 - C0:c1 - C0] |= m
        projected[k_obj] = canvas.sum()
    depth = T * d_cam[..., 2]

    image = np.zeros((height, width, 3), np.uint8)
    if look is not None:
        image = _shade(street, look, t, o, d_road, T, kind, idx, obj_id,
                       (boxes, bmat, bobj, bwin, cyls, cmat, cobj, sphs, smat), corners, K, rot, rng)
    return CameraFrame(channel=channel, image=image, object_id=obj_id, depth=depth, projected_px=projected,
                       visible_px=visible, camera_to_road=pose, t=float(t))


def _object_frames(street: Street, t: float):
    """Centres (n, 3), yaws (n,) and sizes (n, 3) of the objects at ``t``."""
    n = len(street.objects)
    c = np.array([o.centre_at(t) for o in street.objects]).reshape(n, 3)
    yaw = np.array([o.yaw for o in street.objects], np.float64)
    size = np.array([o.size for o in street.objects]).reshape(n, 3)
    return c, yaw, size


def _to_local(p: np.ndarray, centre: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    rx, ry = p[:, 0] - centre[:, 0], p[:, 1] - centre[:, 1]
    return np.stack([c * rx + s * ry, -s * rx + c * ry, p[:, 2] - centre[:, 2]], 1)


def _rot_local(v: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.stack([c * v[:, 0] + s * v[:, 1], -s * v[:, 0] + c * v[:, 1], v[:, 2]], 1)


def _contact_occlusion(street: Street, t: float, p: np.ndarray, pix: np.ndarray, o, rot, K, width, height):
    """Sky-light factor (N,) of ground points ``p`` (flat pixel indices ``pix``): dark under objects, fading
    out within about half a metre of their footprints."""
    ao = np.ones(len(p), np.float32)
    if not street.objects or not len(p):
        return ao
    centre, yaw, size = _object_frames(street, t)
    foot = np.concatenate([centre[:, :2], np.full((len(centre), 1), 0.05), size[:, :2] / 2 + 0.8,
                           np.full((len(centre), 1), 0.05), yaw[:, None]], 1)
    rects = screen_rects((_bounding_corners(foot, np.zeros((0, 5)), np.zeros((0, 4))) - o) @ rot, K, width, height)
    rows, cols = pix // width, pix % width
    for k in np.nonzero((rects[:, 1] > rects[:, 0]) & (rects[:, 3] > rects[:, 2]))[0]:
        r0, r1, c0, c1 = rects[k]
        sel = np.nonzero((rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1))[0]
        if not len(sel):
            continue
        loc = _to_local(p[sel], np.broadcast_to(centre[k], (len(sel), 3)), np.full(len(sel), yaw[k]))
        gap = np.hypot(np.maximum(np.abs(loc[:, 0]) - size[k, 0] / 2, 0),
                       np.maximum(np.abs(loc[:, 1]) - size[k, 1] / 2, 0))
        strength = 0.8 if street.objects[k].category.startswith("vehicle") else 0.45
        ao[sel] = np.minimum(ao[sel], 1 - strength * np.exp(-gap / 0.22))
    return ao


def _shade(street, look: SceneLook, t, o, d_road, T, kind, idx, obj_id, prims, corners, K, rot, rng) -> np.ndarray:
    """Colour every pixel (module docstring); returns (H, W, 3) uint8."""
    boxes, bmat, bobj, bwin, cyls, cmat, cobj, sphs, smat = prims
    prims_f64 = (boxes, cyls, sphs)
    height, width = T.shape
    d = d_road.reshape(-1, 3)
    kind_f, idx_f, t_f = kind.ravel(), idx.ravel(), T.ravel()
    radiance = np.empty((height * width, 3), np.float32)

    pix = np.nonzero(kind_f != KIND_SKY)[0]
    sky = np.nonzero(kind_f == KIND_SKY)[0]
    radiance[sky] = sky_radiance(look, d[sky])
    dh, th, kh, ih = d[pix], t_f[pix], kind_f[pix], idx_f[pix]
    p = o.astype(np.float32)[None, :] + th[:, None] * dh  # float32: 0.1 mm at 1 km
    n = np.zeros((len(pix), 3), np.float32)
    n[:, 2] = 1.0
    boxes, cyls, sphs = boxes.astype(np.float32), cyls.astype(np.float32), sphs.astype(np.float32)
    sun = look.sun.astype(np.float32)
    albedo = np.zeros((len(pix), 3), np.float32)
    mat = np.zeros(len(pix), np.int64)
    gloss = np.zeros(len(pix), np.float32)       # clear-coat reflectance at normal incidence
    mirror = np.zeros(len(pix), bool)            # glass: mostly reflection
    centre, yaw, size = _object_frames(street, t)

    g = kh == KIND_GROUND
    if g.any():
        mat[g] = ground_material(street, p[g, 0], p[g, 1])
        albedo[g] = ground_albedo(street, look, p[g, 0], p[g, 1], mat[g])

    b = np.nonzero(kh == KIND_BOX)[0]
    if len(b):
        bi = ih[b]
        n[b] = box_normals(p[b], boxes[bi])
        mat[b] = bmat[bi]
        glass = bwin[bi] & window_glass(p[b, 0], p[b, 1], p[b, 2])
        mat[b[glass]] = M["glass"]
        albedo[b] = look.box_albedo[bi]
        wall = mat[b] == M["wall"]
        albedo[b[wall]] *= wall_texture(*p[b[wall]].T, look)[:, None]
        albedo[b[glass]] = srgb_to_linear((28, 34, 44))
        mirror[b[glass]] = True
        paving = (mat[b] == M["concrete"]) & (n[b, 2] > 0.5) & (bobj[bi] < 0)
        albedo[b[paving]] *= sidewalk_texture(p[b[paving], 0], p[b[paving], 1], look)[:, None]
        ob = bobj[bi]
        has = ob >= 0
        if has.any():
            bo, k = b[has], ob[has]
            cls = look.obj_class[k]
            loc = _to_local(p[bo], centre[k], yaw[k])
            nloc = _rot_local(n[bo], yaw[k])
            body = (mat[bo] == M["paint"]) & np.isin(cls, (CLS_CAR, CLS_TRUCK, CLS_BUS))
            if body.any():
                albedo[bo[body]] = vehicle_albedo(loc[body], size[k[body]], cls[body], albedo[bo[body]], nloc[body])
                gloss[bo[body]] = 0.05
            cab = mat[bo] == M["car_glass"]
            if cab.any():
                prim_loc = _to_local(p[bo[cab]], boxes[ih[bo[cab]], :3], boxes[ih[bo[cab]], 6])
                half = boxes[ih[bo[cab]], 3:6]
                bus = cls[cab] == CLS_BUS
                frame = (nloc[cab, 2] > 0.5) | (prim_loc[:, 2] < -half[:, 2] + 0.07) | \
                    (~bus & (np.abs(prim_loc[:, 0]) > half[:, 0] - 0.12)) | \
                    (bus & (np.mod(prim_loc[:, 0], 1.4) < 0.14))
                albedo[bo[cab]] = np.where(frame[:, None], look.obj_paint[k[cab]], albedo[bo[cab]])
                mirror[bo[cab][~frame]] = True
                gloss[bo[cab][frame]] = 0.05
            ped = cls == CLS_PED
            if ped.any():
                head = loc[ped, 2] > size[k[ped], 2] / 2 - 0.24
                albedo[bo[ped][head]] = srgb_to_linear((196, 150, 120))
            bar = cls == CLS_BARRIER
            if bar.any():
                stripe = np.mod(np.floor((loc[bar, 0] - loc[bar, 2]) / 0.35), 2) == 0
                albedo[bo[bar][stripe]] = srgb_to_linear((230, 230, 225))

    c = np.nonzero(kh == KIND_CYL)[0]
    if len(c):
        ci = ih[c]
        mat[c] = cmat[ci]
        albedo[c] = look.cyl_albedo[ci]
        top = np.abs(p[c, 2] - (cyls[ci, 2] + cyls[ci, 4])) < 1e-3 + 1e-4 * th[c]
        radial = p[c] - cyls[ci, :3]
        radial[:, 2] = 0
        n[c] = radial / np.maximum(np.linalg.norm(radial, axis=1, keepdims=True), 1e-9)
        n[c[top]] = (0.0, 0.0, 1.0)
        co = cobj[ci]
        cone = (co >= 0) & (look.obj_class[np.maximum(co, 0)] == CLS_CONE)
        if cone.any():
            zc = p[c[cone], 2] - cyls[ci[cone], 2]
            band = ((zc > 0.28) & (zc < 0.38)) | ((zc > 0.48) & (zc < 0.55))
            albedo[c[cone][band]] = srgb_to_linear((235, 235, 230))
        metal = mat[c] == M["metal"]
        gloss[c[metal]] = 0.04

    s = np.nonzero(kh == KIND_SPH)[0]
    if len(s):
        si = ih[s]
        mat[s] = smat[si]
        n[s] = (p[s] - sphs[si, :3]) / sphs[si, 3:4]
        leaf = value_noise(p[s, 0] + p[s, 2], p[s, 1] - p[s, 2], 0.3, look.seed + 41)
        albedo[s] = look.sph_albedo[si] * (0.45 + 0.9 * leaf)[:, None]

    # sun: Lambert with cast shadows
    cos_sun = dot3(n, sun)
    facing = np.nonzero((cos_sun > 0) & (th < 250))[0]
    offset = (0.02 + 0.002 * th[facing])[:, None]
    lit = np.zeros(len(pix), np.float32)
    lit[facing] = ~shadowed((p[facing] + n[facing] * offset).astype(np.float64), look.sun, *prims_f64, corners)
    lit[(cos_sun > 0) & (th >= 250)] = 1.0
    sun_term = np.maximum(cos_sun, 0) * lit
    ao = np.ones(len(pix), np.float32)
    gi = np.nonzero(g)[0]
    ao[gi] = _contact_occlusion(street, t, p[gi], pix[gi], o, rot, K, width, height)
    sky_term = (0.55 + 0.45 * n[:, 2]) * ao
    col = albedo * (look.sky_rgb[None, :] * sky_term[:, None] + look.sun_rgb[None, :] * sun_term[:, None])

    # reflections: glass mirrors the sky (Fresnel), paint and metal get a clear coat and a sun highlight
    cos_v = np.abs((dh * n).sum(1))
    fres = (1 - cos_v) ** 5
    refl_w = np.where(mirror, 0.06 + 0.6 * fres, gloss + 0.4 * fres * (gloss > 0))
    need = refl_w > 0
    if need.any():
        r = dh[need] - 2 * (dh[need] * n[need]).sum(1, keepdims=True) * n[need]
        env = sky_radiance(look, r, clouds=False)
        env = np.where(r[:, 2:3] < 0, look.horizon[None, :] * 0.25, env)  # reflected ground: dark
        half_v = sun[None, :] - dh[need]
        half_v /= np.linalg.norm(half_v, axis=1, keepdims=True)
        spec = np.clip((half_v * n[need]).sum(1), 0, 1) ** 80 * lit[need] * (cos_sun[need] > 0)
        w = refl_w[need][:, None]
        col[need] = col[need] * (1 - w) + w * env + (spec * 2.0)[:, None] * look.sun_rgb[None, :] * w
    haze = np.exp(-th / np.float32(look.haze_m))[:, None]
    radiance[pix] = col * haze + look.horizon[None, :] * (1 - haze)

    # camera: exposure and white balance (each camera's own, about 5 % and 2 %), filmic curve and gamma
    # (one lookup table), vignetting, noise
    gain = np.full(3, 1.6 * look.exposure * _TONE_STEPS / _TONE_MAX, np.float32)
    if rng is not None:
        gain *= np.float32(np.exp(rng.normal(0, 0.05))) * (1 + rng.normal(0, 0.02, 3)).astype(np.float32)
    code = np.minimum(radiance * gain[None, :], _TONE_STEPS)
    img = _TONE_LUT[code.astype(np.int32)].reshape(height, width, 3)
    ux = ((np.arange(width, dtype=np.float32) + 0.5) / (width / 2) - 1) ** 2
    vy = ((np.arange(height, dtype=np.float32) + 0.5) / (height / 2) - 1) ** 2
    img *= (1 - 0.12 * (ux[None, :] + 0.6 * vy[:, None]))[..., None]
    if rng is not None:
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.008)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
