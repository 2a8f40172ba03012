"""Tiny multi-sensor samples and settings of ``token_fusion`` for the contract test: the BEV family's example
samples (six small JPEG cameras, LiDAR points on the ground and a car; :mod:`toolkit.tasks.bev.example`)
with a model small enough to run every hook in seconds."""

from __future__ import annotations

from toolkit.tasks.bev.example import example_samples

#: task overrides: 32 x 64 images in 16 px patches (8 tokens a camera), a 16 x 16 m grid of 1 m pillars in
#: 4 x 4 patches (16 tokens), width 16.
TINY = {"dim": 16, "heads": 2, "mlp_ratio": 2.0, "image_patch": 16, "image_depth": 1, "lidar_depth": 1,
        "fusion_depth": 1, "embed_dim": 8, "fused_dim": 8, "rerank_k": 2,
        "sample.image_height": 32, "sample.image_width": 64, "sample.max_points": 256,
        "pillars.x_bounds": [-8.0, 8.0], "pillars.y_bounds": [-8.0, 8.0], "pillars.z_bounds": [-1.0, 3.0],
        "pillars.resolution": 1.0, "pillars.max_points_per_pillar": 8, "pillars.max_pillars": 64,
        "pillars.channels": 8, "pillars.patch": 4}

__all__ = ["TINY", "example_samples"]
