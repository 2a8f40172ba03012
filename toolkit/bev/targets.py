"""BEV training targets from ego-frame boxes: segmentation, validity, centre heat map, centre offsets.

Computed at decode time (the grid and the category filter are task settings), from a
:data:`toolkit.bev.boxes.BOX_DTYPE` array on a :class:`toolkit.bev.grid.BEVGrid` (rows along ego x, row 0 at
``x_min``; columns along ego y, column 0 at ``y_min``). Definitions:

* **seg** (1, R, C): 1 in every cell whose **centre lies strictly inside** a selected box's footprint (the
  rectangle of centre, ``w, l`` and ``yaw`` in the ego x-y plane; tested with shapely's ``contains_xy``),
  else 0. Boxes of every visibility are drawn (Simple-BEV).
* **valid** (1, R, C): 0 in the footprint cells of selected boxes whose visibility bin is in
  ``ignore_visibility`` (default bin 1, 0-40 % visible), also where a visible box overlaps them; 1
  elsewhere (Simple-BEV ``valid_bev``: the loss and the IoU skip these cells).
* **center** (1, R, C): per instance ``exp(-d^2 / (2 sigma^2))``, ``d`` the distance in cells from a cell's
  centre to the centre of the cell that contains the box centre, so the peak is exactly 1 there; values
  below 1e-3 are set to 0 and overlapping instances take the max (Simple-BEV; CenterNet's peak-at-a-cell).
  Instances whose centre lies off the grid contribute their tails only.
* **offset** (2, R, C): in each seg cell, the vector **from the cell to its instance's centre**, in cells,
  channels ``(row, col)`` = (along ego x, along ego y): ``offset = index(centre) - (row, col)`` with the
  continuous index of :meth:`BEVGrid.ego_to_index`, so ``(row, col) + offset`` is the exact box centre.
  0 outside instances. The sign and channel order are FIERY's (``instance.py``: centre - pixel, (row, col));
  unlike Simple-BEV's stored offsets these are not doubled and do not point away from the centre.
* **instance** (R, C) int32: 0 = none, ``k + 1`` = the k-th selected box (input order); where footprints
  overlap, the later box wins (its offsets are used).

A box is *selected* when its category starts with one of ``categories`` (default ``vehicle.``: car,
truck, bus, trailer, construction, emergency, motorcycle, bicycle, as Simple-BEV's ``'vehicle' in name``).
"""

from __future__ import annotations

import numpy as np
import shapely

from .boxes import box_footprints
from .grid import BEVGrid

__all__ = ["VEHICLE_CATEGORIES", "select_boxes", "rasterize_footprints", "bev_targets"]

VEHICLE_CATEGORIES = ("vehicle.",)
_MIN_HEAT = 1e-3


def select_boxes(boxes: np.ndarray, categories=VEHICLE_CATEGORIES) -> np.ndarray:
    """The boxes whose ``category`` starts with one of the prefixes ``categories`` (order kept)."""
    if isinstance(categories, str):
        raise ValueError(f"categories must be a sequence of prefixes, got the string {categories!r}")
    keep = np.zeros(len(boxes), bool)
    for prefix in categories:
        keep |= np.char.startswith(boxes["category"], prefix)
    return boxes[keep]


def rasterize_footprints(boxes: np.ndarray, grid: BEVGrid) -> np.ndarray:
    """Instance map of box footprints: cell = ``k + 1`` if its centre is strictly inside box ``k``'s footprint.

    Args:
        boxes: :data:`~toolkit.bev.boxes.BOX_DTYPE` array (all of them are drawn; later boxes overwrite).
        grid: the BEV grid.

    Returns:
        (R, C) int32, 0 where no box covers a cell centre.
    """
    rows, cols = grid.shape
    out = np.zeros((rows, cols), np.int32)
    if len(boxes) == 0:
        return out
    for k, corners in enumerate(box_footprints(boxes)):
        idx = grid.ego_to_index(corners)
        r0, c0 = np.maximum(np.floor(idx.min(0)).astype(int), 0)
        r1, c1 = np.minimum(np.ceil(idx.max(0)).astype(int) + 1, (rows, cols))
        if r0 >= r1 or c0 >= c1:
            continue  # off the grid
        rr, cc = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
        xy = grid.index_to_ego(np.stack([rr.ravel(), cc.ravel()], 1))
        inside = shapely.contains_xy(shapely.Polygon(corners), xy[:, 0], xy[:, 1]).reshape(rr.shape)
        out[r0:r1, c0:c1][inside] = k + 1
    return out


def bev_targets(boxes: np.ndarray, grid: BEVGrid | None = None, categories=VEHICLE_CATEGORIES,
                sigma_cells: float = 3.0, ignore_visibility=(1,)) -> dict[str, np.ndarray]:
    """Simple-BEV/FIERY-style targets of one sample (definitions in the module docstring).

    Args:
        boxes: :data:`~toolkit.bev.boxes.BOX_DTYPE` array in the keyframe ego frame.
        grid: the BEV grid (default :class:`BEVGrid()`: 200 x 200 cells of 0.5 m).
        categories: category-name prefixes of the boxes drawn.
        sigma_cells: Gaussian standard deviation of the centre heat map, cells (Simple-BEV: 3).
        ignore_visibility: visibility bins whose boxes are 0 in ``valid``.

    Returns:
        ``seg``, ``valid``, ``center``: (1, R, C) float32; ``offset``: (2, R, C) float32 (cells, channels
        row, col); ``instance``: (R, C) int32.

    Raises:
        ValueError: a non-positive ``sigma_cells`` or a bad ``categories``.
    """
    if sigma_cells <= 0:
        raise ValueError(f"sigma_cells must be > 0, got {sigma_cells}")
    grid = grid or BEVGrid()
    rows, cols = grid.shape
    sel = select_boxes(boxes, categories)
    instance = rasterize_footprints(sel, grid)
    seg = instance > 0
    ignored = np.isin(sel["visibility"], np.asarray(ignore_visibility, dtype=int))
    valid = rasterize_footprints(sel[ignored], grid) == 0

    center = np.zeros((rows, cols), np.float32)
    offset = np.zeros((2, rows, cols), np.float32)
    if len(sel):
        cidx = grid.ego_to_index(sel["center"])               # exact centres, continuous index
        peak = np.floor(cidx + 0.5)                            # the cells containing them
        radius = int(np.ceil(sigma_cells * np.sqrt(-2 * np.log(_MIN_HEAT))))
        for (pr, pc) in peak.astype(int):
            r0, r1 = max(pr - radius, 0), min(pr + radius + 1, rows)
            c0, c1 = max(pc - radius, 0), min(pc + radius + 1, cols)
            if r0 >= r1 or c0 >= c1:
                continue
            dr = np.arange(r0, r1)[:, None] - pr
            dc = np.arange(c0, c1)[None, :] - pc
            heat = np.exp(-(dr ** 2 + dc ** 2) / (2 * sigma_cells ** 2))
            np.maximum(center[r0:r1, c0:c1], heat, out=center[r0:r1, c0:c1])
        center[center < _MIN_HEAT] = 0
        r, c = np.nonzero(seg)
        k = instance[r, c] - 1
        offset[0, r, c] = cidx[k, 0] - r
        offset[1, r, c] = cidx[k, 1] - c
    return {"seg": seg[None].astype(np.float32), "valid": valid[None].astype(np.float32), "center": center[None],
            "offset": offset, "instance": instance}
