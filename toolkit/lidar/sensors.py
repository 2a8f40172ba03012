"""Spinning-LiDAR sensor descriptions used by the synthetic generator and by binning.

Figures for the Velodyne HDL-32E of nuScenes' LIDAR_TOP, measured on the real keyframe in
``shared/data/nuscenes-real-1sample`` (see ``shared/notes/lidar-tokenizer.md`` section 8): ring 0 is the
lowest beam at about -30.67 deg, rings are 4/3 deg apart up to +10.67 deg; one sweep is 1084
columns (0.332 deg azimuth step) at 20 Hz; the sweep starts pointing to ego-left (lidar azimuth
about -178.8 deg) and atan2(y, x) decreases from column to column.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SpinningLidar:
    """A spinning multi-beam LiDAR.

    Attributes:
        name: model name.
        elevation_deg: (n_rings,) beam elevations in degrees, ring 0 first (ascending for Velodyne).
        columns: firing positions per sweep.
        sweep_s: duration of one revolution, s.
        start_azimuth_deg: lidar-frame azimuth atan2(y, x) of column 0, deg.
        max_range_m: farthest return the sensor reports, m.
        range_noise_m: 1-sigma range noise, m.
    """

    name: str
    elevation_deg: np.ndarray
    columns: int
    sweep_s: float
    start_azimuth_deg: float
    max_range_m: float
    range_noise_m: float

    @property
    def n_rings(self) -> int:
        return len(self.elevation_deg)

    @property
    def azimuth_step_deg(self) -> float:
        """Azimuth advance per column, deg (positive; the azimuth decreases by this much)."""
        return 360.0 / self.columns


HDL32E = SpinningLidar(
    name="Velodyne HDL-32E",
    elevation_deg=-30.67 + np.arange(32) * (4.0 / 3.0),
    columns=1084,
    sweep_s=0.05,
    start_azimuth_deg=-178.8,
    max_range_m=105.0,
    range_noise_m=0.02,
)
