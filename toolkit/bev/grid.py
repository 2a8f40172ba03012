"""The bird's-eye-view grid: cells of the keyframe ego frame, and the voxels above them.

Convention (LSS and FIERY; everywhere in this project): a BEV array is indexed ``[row, col]`` with
**rows along ego x (forward)** and **columns along ego y (left)**; **row 0 is the rear end** (``x = x_min``,
-50 m by default) and **column 0 the right end** (``y = y_min``). Cell ``(i, j)`` covers
``x in [x_min + i r, x_min + (i + 1) r)`` and ``y in [y_min + j r, y_min + (j + 1) r)``; its centre is
``(x_min + (i + 0.5) r, y_min + (j + 0.5) r)`` (Simple-BEV's ``utils/vox.py`` cell centres). A continuous
*index* puts cell ``i``'s centre at ``i``: ``row = (x - x_min) / r - 0.5``.

Shown as an image with ``imshow(a)`` (row 0 at the top) this puts the rear at the top and the ego's right on
the left; :mod:`toolkit.visualize` draws with forward up and left on the left.

Voxels (for lifting camera features, :func:`toolkit.camera.voxels.voxel_to_pixel`) add ``z_cells`` levels
over ``z_bounds``, level 0 at the bottom: ``(z_cells, rows, cols)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BEVGrid"]


@dataclass(frozen=True)
class BEVGrid:
    """A BEV grid in the keyframe ego frame (see the module docstring for the index convention).

    Args:
        x_bounds: ``(x_min, x_max)`` along ego x (forward), m.
        y_bounds: ``(y_min, y_max)`` along ego y (left), m.
        resolution: cell size in x and y, m (the extents must be multiples of it).
        z_bounds: ``(z_min, z_max)`` of the voxels above the grid, m.
        z_cells: voxel levels over ``z_bounds``.

    Raises:
        ValueError: on empty bounds, a non-positive resolution or extents that are not whole cells.

    Default: x, y in [-50, 50] m at 0.5 m -> 200 x 200 cells (LSS, FIERY, Simple-BEV), z in [-5, 3] m in 8
    levels of 1 m.
    """

    x_bounds: tuple[float, float] = (-50.0, 50.0)
    y_bounds: tuple[float, float] = (-50.0, 50.0)
    resolution: float = 0.5
    z_bounds: tuple[float, float] = (-5.0, 3.0)
    z_cells: int = 8

    def __post_init__(self):
        object.__setattr__(self, "x_bounds", tuple(float(v) for v in self.x_bounds))
        object.__setattr__(self, "y_bounds", tuple(float(v) for v in self.y_bounds))
        object.__setattr__(self, "z_bounds", tuple(float(v) for v in self.z_bounds))
        if self.resolution <= 0:
            raise ValueError(f"BEV resolution must be > 0 m, got {self.resolution}")
        if self.z_cells < 1:
            raise ValueError(f"BEV z_cells must be >= 1, got {self.z_cells}")
        for name in ("x_bounds", "y_bounds", "z_bounds"):
            lo, hi = getattr(self, name)
            if len(getattr(self, name)) != 2 or not hi > lo:
                raise ValueError(f"BEV {name} must be (min, max) with max > min, got {getattr(self, name)}")
        for name in ("x_bounds", "y_bounds"):
            lo, hi = getattr(self, name)
            n = (hi - lo) / self.resolution
            if abs(n - round(n)) > 1e-6:
                raise ValueError(f"BEV {name} {getattr(self, name)} is not a whole number of {self.resolution} m cells")

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` = (cells along x, cells along y)."""
        return (round((self.x_bounds[1] - self.x_bounds[0]) / self.resolution),
                round((self.y_bounds[1] - self.y_bounds[0]) / self.resolution))

    def ego_to_index(self, xy) -> np.ndarray:
        """Continuous ``(row, col)`` of ego points, cell ``i``'s centre at ``i``.

        Args:
            xy: (N, 2) ego ``x, y``, m (extra columns ignored).

        Returns:
            (N, 2) float64 ``(row, col)``; the containing cell is ``floor(index + 0.5)``.
        """
        xy = np.asarray(xy, np.float64).reshape(-1, np.shape(xy)[-1])[:, :2]
        lo = np.array([self.x_bounds[0], self.y_bounds[0]])
        return (xy - lo) / self.resolution - 0.5

    def index_to_ego(self, rc) -> np.ndarray:
        """Ego ``(x, y)`` in metres of continuous ``(row, col)`` indices, (N, 2) -> (N, 2) float64."""
        rc = np.asarray(rc, np.float64).reshape(-1, 2)
        lo = np.array([self.x_bounds[0], self.y_bounds[0]])
        return (rc + 0.5) * self.resolution + lo

    def cell_centers(self) -> np.ndarray:
        """(rows, cols, 2) float64 ego ``(x, y)`` of every cell centre, m."""
        rows, cols = self.shape
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        return self.index_to_ego(np.stack([r, c], -1).reshape(-1, 2)).reshape(rows, cols, 2)

    def voxel_centers(self) -> np.ndarray:
        """(z_cells, rows, cols, 3) float64 ego ``(x, y, z)`` of every voxel centre, m (level 0 = lowest)."""
        dz = (self.z_bounds[1] - self.z_bounds[0]) / self.z_cells
        z = self.z_bounds[0] + (np.arange(self.z_cells) + 0.5) * dz
        xy = self.cell_centers()
        out = np.empty((self.z_cells, *xy.shape[:2], 3))
        out[..., :2] = xy
        out[..., 2] = z[:, None, None]
        return out
