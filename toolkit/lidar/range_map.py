"""Range maps: the dense 2-D image of a spinning LiDAR sweep, and the way back to points.

A range map has one row per ring (laser) and one column per firing position. Row 0 is the
*highest* ring (so images read with the sky on top) and column 0 is the first column fired;
along a row the azimuth decreases (the sensor spins clockwise seen from above), as in nuScenes
and in the Cosmos LiDAR tokenizer's 128x3600 maps.

Every pixel keeps the exact direction of the point that produced it (``azimuth`` and
``elevation`` in rad, float32), because real sweeps are ego-motion compensated and their rays do
not lie on an ideal (ring, column) grid; with them the inverse reproduces every point to float32
precision (micrometres), not to the grid's angular resolution.

Two ways in:

* :func:`range_map_from_ring_layout`: the *exact* layout, for clouds that carry a ring index and
  are stored in firing order (nuScenes ``.pcd.bin``: point ``i`` has ring ``i % 32``). No binning.
* :func:`range_map_from_binning`: for clouds with only ``x, y, z[, intensity]``: row = nearest ring
  elevation, column = azimuth bin, nearest return wins (as the Cosmos preprocessing does).

Frames and units: points are in the sensor frame (nuScenes LIDAR_TOP: x to ego-right, y to
ego-forward, z up), in metres; azimuth = atan2(y, x), elevation = atan2(z, hypot(x, y)), in rad.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "RangeMap",
    "is_ring_layout",
    "range_map_from_ring_layout",
    "range_map_from_binning",
    "range_map_from_points",
    "points_from_range",
]


@dataclass
class RangeMap:
    """One LiDAR sweep as a range map.

    Attributes:
        range_m: (H, W) float32, distance from the sensor in metres; 0 where no point exists.
        intensity: (H, W) float32, return intensity as stored by the sensor (nuScenes: 0-255).
        mask: (H, W) bool, True where the pixel holds a real return inside
            [``min_range_m``, ``max_range_m``] (ego-roof hits and no-return rays are False).
        azimuth: (H, W) float32, rad, direction of each pixel's point (nominal where empty).
        elevation: (H, W) float32, rad, likewise.
        ring_elevation_deg: (H,) float64, median elevation of each row's returns, deg, row 0 highest.
        layout: ``"ring"`` (exact firing-order layout) or ``"binned"``.
        min_range_m, max_range_m: the interval used for ``mask``.
    """

    range_m: np.ndarray
    intensity: np.ndarray
    mask: np.ndarray
    azimuth: np.ndarray
    elevation: np.ndarray
    ring_elevation_deg: np.ndarray
    layout: str
    min_range_m: float
    max_range_m: float
    extra: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.range_m.shape)  # type: ignore[return-value]

    def points(self, valid_only: bool = True) -> np.ndarray:
        """Back to points: (M, 4) float32 ``x, y, z, intensity`` in metres, row-major pixel order.

        Args:
            valid_only: keep only pixels where ``mask`` is True (else every pixel with range > 0).
        """
        keep = self.mask if valid_only else self.range_m > 0
        xyz = points_from_range(self.range_m, self.azimuth, self.elevation)[keep]
        return np.concatenate([xyz, self.intensity[keep][:, None]], axis=1).astype(np.float32)


def _angles(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Range (m), azimuth (rad) and elevation (rad) of (..., 3) points, computed in float64."""
    x, y, z = (xyz[..., i].astype(np.float64) for i in range(3))
    horiz = np.hypot(x, y)
    return np.sqrt(horiz * horiz + z * z), np.arctan2(y, x), np.arctan2(z, horiz)


def _ring_medians(elevation: np.ndarray, valid: np.ndarray, fallback_deg: np.ndarray | None) -> np.ndarray:
    """Median elevation per row in degrees over valid pixels; ``fallback_deg`` (or NaN) for empty rows."""
    out = np.full(elevation.shape[0], np.nan)
    for row in range(elevation.shape[0]):
        sel = valid[row]
        if sel.any():
            out[row] = np.degrees(np.median(elevation[row][sel]))
        elif fallback_deg is not None:
            out[row] = fallback_deg[row]
    return out


def is_ring_layout(points: np.ndarray, n_rings: int) -> bool:
    """True if ``points`` (N, >=5) is a dense firing-order grid: point ``i`` has ring ``i % n_rings``.

    This holds for nuScenes LIDAR_TOP ``.pcd.bin`` files (column 4 is the ring, 0 = lowest beam).
    """
    if points.ndim != 2 or points.shape[1] < 5 or len(points) == 0 or len(points) % n_rings:
        return False
    ring = points[:, 4]
    return bool(np.array_equal(ring.astype(np.int64), np.arange(len(points)) % n_rings)
                and np.all(ring == np.round(ring)))


def range_map_from_ring_layout(
    points: np.ndarray, n_rings: int = 32, min_range_m: float = 1.0, max_range_m: float = 200.0
) -> RangeMap:
    """Exact range map of a firing-order cloud with a ring index (no binning, nothing dropped).

    Args:
        points: (N, >=5) float32 ``x, y, z, intensity, ring`` in the sensor frame, metres, with
            ``N = n_rings * W`` and ring ``i % n_rings`` for point ``i`` (ring 0 = lowest beam).
        n_rings: number of rings H.
        min_range_m, max_range_m: pixels outside this interval get ``mask = False``; they are kept
            in ``range_m`` so the inverse reproduces every point of the file.

    Returns:
        RangeMap of shape (n_rings, N / n_rings); row 0 is the highest ring.

    Raises:
        ValueError: if the cloud is not in that layout (use :func:`range_map_from_binning`).
    """
    if not is_ring_layout(points, n_rings):
        raise ValueError(
            f"point cloud of shape {points.shape} is not a dense firing-order grid with ring i % {n_rings}; "
            "use range_map_from_binning for clouds without that layout"
        )
    width = len(points) // n_rings
    grid = points.reshape(width, n_rings, points.shape[1])[:, ::-1]  # (W, H, F), highest ring first
    grid = np.ascontiguousarray(grid.transpose(1, 0, 2))  # (H, W, F)
    rng, az, el = _angles(grid[..., :3])
    mask = (rng >= min_range_m) & (rng <= max_range_m)
    return RangeMap(
        range_m=rng.astype(np.float32),
        intensity=grid[..., 3].astype(np.float32),
        mask=mask,
        azimuth=az.astype(np.float32),
        elevation=el.astype(np.float32),
        ring_elevation_deg=_ring_medians(el, mask, None),
        layout="ring",
        min_range_m=float(min_range_m),
        max_range_m=float(max_range_m),
    )


def range_map_from_binning(
    points: np.ndarray,
    ring_elevation_deg: np.ndarray,
    width: int,
    azimuth_start_rad: float = np.pi,
    min_range_m: float = 1.0,
    max_range_m: float = 200.0,
) -> RangeMap:
    """Range map of a cloud without ring index, by elevation/azimuth binning; nearest return wins.

    Row = the ring whose elevation is nearest (points more than half a ring spacing outside the
    field of view are dropped); column = ``floor((azimuth_start - azimuth) / (2 pi) * width) mod width``
    (column 0 at ``azimuth_start``, azimuth decreasing along the row, as in Cosmos' projection).
    When several points fall in one pixel the nearest one is kept (Cosmos ``scatter_min``).
    Only points with range in [``min_range_m``, ``max_range_m``] are binned.

    Args:
        points: (N, 3) or (N, >=4) float ``x, y, z[, intensity]``, sensor frame, metres.
        ring_elevation_deg: (H,) elevation of each row in degrees, row 0 the highest (descending).
        width: number of columns W.
        azimuth_start_rad: azimuth of column 0's left edge, rad.

    Returns:
        RangeMap (H, W). Empty pixels have range 0, ``mask`` False and the nominal ring/column angles.

    Raises:
        ValueError: on a wrongly shaped cloud or non-descending ring elevations.
    """
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"expected points of shape (N, >=3), got {points.shape}")
    elev_deg = np.asarray(ring_elevation_deg, dtype=np.float64)
    if elev_deg.ndim != 1 or len(elev_deg) < 1 or np.any(np.diff(elev_deg) >= 0):
        raise ValueError("ring_elevation_deg must be a 1-D array in strictly descending order (row 0 highest)")
    height = len(elev_deg)
    rng, az, el = _angles(points[:, :3])
    intensity = points[:, 3] if points.shape[1] > 3 else np.zeros(len(points))

    elev_rad = np.radians(elev_deg)
    # nearest ring: elevations are descending, search on the ascending reversed array
    asc = elev_rad[::-1]
    idx = np.clip(np.searchsorted(asc, el), 1, height - 1) if height > 1 else np.zeros(len(el), int)
    if height > 1:
        left, right = asc[idx - 1], asc[idx]
        idx = np.where(np.abs(el - left) <= np.abs(el - right), idx - 1, idx)
    row = height - 1 - idx
    half_gap = np.abs(np.diff(elev_rad)).max() / 2 if height > 1 else np.radians(1.0)
    in_fov = (el <= elev_rad[0] + half_gap) & (el >= elev_rad[-1] - half_gap)
    col = np.floor(np.mod(azimuth_start_rad - az, 2 * np.pi) / (2 * np.pi) * width).astype(np.int64) % width
    keep = in_fov & (rng >= min_range_m) & (rng <= max_range_m)
    row, col, rng_k = row[keep], col[keep], rng[keep]

    flat = row * width + col
    order = np.lexsort((rng_k, flat))  # by pixel, then nearest first
    flat_sorted = flat[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = flat_sorted[1:] != flat_sorted[:-1]
    winner = np.nonzero(keep)[0][order[first]]
    pix = flat_sorted[first]

    col_centres = azimuth_start_rad - (np.arange(width) + 0.5) / width * 2 * np.pi
    azimuth = np.broadcast_to(np.angle(np.exp(1j * col_centres))[None, :], (height, width)).astype(np.float32).copy()
    elevation = np.broadcast_to(elev_rad[:, None], (height, width)).astype(np.float32).copy()
    range_m = np.zeros((height, width), np.float32)
    inten = np.zeros((height, width), np.float32)
    mask = np.zeros((height, width), bool)
    range_m.flat[pix] = rng[winner]
    inten.flat[pix] = intensity[winner]
    azimuth.flat[pix] = az[winner]
    elevation.flat[pix] = el[winner]
    mask.flat[pix] = True
    return RangeMap(
        range_m=range_m,
        intensity=inten,
        mask=mask,
        azimuth=azimuth,
        elevation=elevation,
        ring_elevation_deg=_ring_medians(elevation, mask, elev_deg),
        layout="binned",
        min_range_m=float(min_range_m),
        max_range_m=float(max_range_m),
    )


def range_map_from_points(
    points: np.ndarray,
    n_rings: int = 32,
    width: int | None = None,
    ring_elevation_deg: np.ndarray | None = None,
    min_range_m: float = 1.0,
    max_range_m: float = 200.0,
) -> RangeMap:
    """Pick the exact ring layout when the cloud has it, else bin by elevation/azimuth.

    Args:
        points: (N, 4 or 5) float32 sensor-frame cloud (``x, y, z, intensity[, ring]``), metres.
        n_rings: rings of the sensor (32 for the nuScenes HDL-32E).
        width: columns for binning (default: ``N // n_rings`` rounded, at least 1).
        ring_elevation_deg: (n_rings,) ring elevations for binning, row 0 highest; default: the
            HDL-32E's (:data:`toolkit.lidar.sensors.HDL32E`).

    Raises:
        ValueError: if binning is needed and ``ring_elevation_deg`` has the wrong length.
    """
    if is_ring_layout(points, n_rings):
        return range_map_from_ring_layout(points, n_rings, min_range_m, max_range_m)
    if ring_elevation_deg is None:
        from toolkit.lidar.sensors import HDL32E

        if n_rings != HDL32E.n_rings:
            raise ValueError(f"binning a {n_rings}-ring cloud needs ring_elevation_deg")
        ring_elevation_deg = HDL32E.elevation_deg[::-1]
    if len(ring_elevation_deg) != n_rings:
        raise ValueError(f"ring_elevation_deg has {len(ring_elevation_deg)} entries, expected {n_rings}")
    width = width or max(1, round(len(points) / n_rings))
    return range_map_from_binning(points[:, :4], ring_elevation_deg, width, np.pi, min_range_m, max_range_m)


def points_from_range(range_m, azimuth, elevation):
    """Inverse projection: (..., ) ranges and angles -> (..., 3) points in the sensor frame, metres.

    Works on numpy arrays (float64 maths, float32 out) and on torch tensors (same dtype in).
    ``x = r cos(el) cos(az)``, ``y = r cos(el) sin(az)``, ``z = r sin(el)``.
    """
    try:
        import torch

        if isinstance(range_m, torch.Tensor):
            c = torch.cos(elevation)
            return torch.stack([range_m * c * torch.cos(azimuth), range_m * c * torch.sin(azimuth),
                                range_m * torch.sin(elevation)], dim=-1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    r = np.asarray(range_m, np.float64)
    az = np.asarray(azimuth, np.float64)
    el = np.asarray(elevation, np.float64)
    c = np.cos(el)
    return np.stack([r * c * np.cos(az), r * c * np.sin(az), r * np.sin(el)], axis=-1).astype(np.float32)
