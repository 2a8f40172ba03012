"""Bird's-eye-view geometry and targets in the keyframe ego frame: the grid and its index convention
(``grid.py``: rows along ego x with row 0 at the rear, columns along ego y with column 0 on the right), the
shared ego-frame box array with corners and footprints (``boxes.py``) and the Simple-BEV/FIERY training
targets seg, valid, center and offset (``targets.py``). Numpy and shapely; no images, no models."""

from .boxes import BOX_DTYPE, box_corners, box_footprints, make_boxes
from .grid import BEVGrid
from .targets import VEHICLE_CATEGORIES, bev_targets, rasterize_footprints, select_boxes

__all__ = ["BEVGrid", "BOX_DTYPE", "make_boxes", "box_corners", "box_footprints", "bev_targets",
           "rasterize_footprints", "select_boxes", "VEHICLE_CATEGORIES"]
