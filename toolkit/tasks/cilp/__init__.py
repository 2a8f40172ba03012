"""CILP and fusion tasks on RGB + LiDAR cube/sphere pairs (seed 003): ``fusion``, ``cilp``,
``cilp_projector``, ``rgb2lidar``."""
