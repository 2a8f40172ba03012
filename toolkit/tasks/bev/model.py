"""The BEV segmentation network: Simple-BEV's parameter-free lifting between an image encoder and FIERY's decoder.

``images (B, S, 3, H, W)`` in [0, 1], ``intrinsics (B, S, 3, 3)`` of those images (px), ``cam2ego (B, S, 4, 4)``
camera -> keyframe ego frame, optionally ``points (B, N, 5+)`` ego-frame LiDAR points (x, y, z m, ...; rows
with ``points_mask`` 0 are padding) ->

1. :class:`~toolkit.tasks.bev.encoder.ImageEncoder` per camera: ``(B S, C, H/8, W/8)``.
2. Lifting (Simple-BEV, Harley et al. 2022): every voxel centre of the grid (ego frame, :class:`BEVGrid`) is
   projected into every camera (:func:`toolkit.camera.voxels.voxel_to_pixel`), the feature map is sampled
   bilinearly there (``grid_sample``, ``align_corners=False``), zero where the centre falls outside the image
   or behind the camera, and averaged over the cameras that see it. No depth, no parameters.
3. Height folded into channels: ``(B, C * Zc, rows, cols)``; with LiDAR (``inputs`` ``lidar`` or
   ``cam+lidar``), the binary occupancy of the same voxels ``(B, Zc, rows, cols)`` is concatenated (Simple-BEV's
   C+L model); LiDAR-only uses the occupancy alone.
4. BEV compressor: conv3x3 (no bias) + InstanceNorm + GELU to ``C`` channels; then
   :class:`~toolkit.tasks.bev.decoder.BEVDecoder`: ``seg`` logits, ``center`` (sigmoid), ``offset`` (cells).

Outputs are on the BEV grid ``[row, col]`` = (ego x from the rear, ego y from the right), see
:mod:`toolkit.bev.grid`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.bev.grid import BEVGrid
from toolkit.camera.voxels import voxel_to_pixel

from .decoder import BEVDecoder
from .encoder import ImageEncoder
from .losses import UncertaintyWeights

INPUTS = ("cam", "lidar", "cam+lidar")


def lift(features: torch.Tensor, centers: torch.Tensor, intrinsics: torch.Tensor, cam2ego: torch.Tensor,
         image_size: tuple[int, int]) -> torch.Tensor:
    """Sample per-camera features at the projections of voxel centres and average over cameras.

    Args:
        features: (B * S, C, h, w) feature maps covering each ``image_size`` image exactly.
        centers: (N, 3) ego-frame voxel centres, m.
        intrinsics: (B, S, 3, 3) of the ``image_size`` images, px; cam2ego: (B, S, 4, 4).
        image_size: ``(H, W)`` px.

    Returns:
        (B, C, N) float: the mean over the cameras whose image contains the voxel centre (in front of the
        camera), 0 where none does.
    """
    B, S = intrinsics.shape[0], intrinsics.shape[1]
    C = features.shape[1]
    grid, valid = voxel_to_pixel(centers, intrinsics.float(), cam2ego.float(), image_size)
    n = centers.shape[0]
    sampled = F.grid_sample(features, grid.reshape(B * S, 1, n, 2).to(features.dtype), mode="bilinear",
                            padding_mode="zeros", align_corners=False)  # (B S, C, 1, N)
    mask = valid.reshape(B, S, 1, n).to(features.dtype)
    sampled = sampled.reshape(B, S, C, n) * mask
    return sampled.sum(1) / mask.sum(1).clamp(min=1.0)


def occupancy(points: torch.Tensor, points_mask: torch.Tensor, grid_min: torch.Tensor, cell: torch.Tensor,
              dims: tuple[int, int, int]) -> torch.Tensor:
    """Binary voxel occupancy of ego-frame points.

    Args:
        points: (B, N, >=3) ego ``x, y, z``, m; points_mask: (B, N) 1 for real points, 0 for padding.
        grid_min: (3,) ``x_min, y_min, z_min`` m; cell: (3,) voxel size along x, y, z, m.
        dims: ``(z_cells, rows, cols)``.

    Returns:
        (B, z_cells, rows, cols) float {0, 1}.
    """
    B, N = points.shape[0], points.shape[1]
    zc, rows, cols = dims
    idx = torch.floor((points[..., :3].float() - grid_min) / cell).long()  # (B, N, 3): row, col, level
    r, c, z = idx[..., 0], idx[..., 1], idx[..., 2]
    ok = (points_mask > 0) & (r >= 0) & (r < rows) & (c >= 0) & (c < cols) & (z >= 0) & (z < zc)
    b = torch.arange(B, device=points.device).view(B, 1).expand(B, N)
    flat = ((b * zc + z) * rows + r) * cols + c
    occ = torch.zeros(B * zc * rows * cols, device=points.device)
    occ.index_fill_(0, flat[ok], 1.0)
    return occ.view(B, zc, rows, cols)


class BEVSegNet(nn.Module):
    """Simple-BEV-style camera (+ LiDAR) BEV segmentation with FIERY heads (module docstring).

    Args:
        grid: the BEV grid and voxel levels (ego frame).
        image_size: ``(H, W)`` of the input images, px (multiples of 16).
        inputs: ``cam``, ``lidar`` or ``cam+lidar``.
        encoder, encoder_base, feat_channels, merge_channels: :class:`ImageEncoder` settings.
        decoder_width, decoder_norm: :class:`BEVDecoder` settings.
        uncertainty: hold the learnable log-variances of the loss weighting (``weights``; not used in forward).
        seg_prior: initial foreground probability of the seg head (:class:`BEVDecoder`; 0 = default init).

    ``forward(images, intrinsics, cam2ego, points, points_mask)`` returns ``(seg, center, offset)``; the
    unused inputs of a ``lidar`` or ``cam`` model may be empty tensors.

    Raises:
        ValueError: for an unknown ``inputs`` or a grid whose rows/cols are not multiples of 8.
    """

    def __init__(self, grid: BEVGrid, image_size: tuple[int, int], inputs: str = "cam", encoder: str = "resnet101",
                 encoder_base: int = 64, feat_channels: int = 128, merge_channels: int = 512, decoder_width: int = 64,
                 decoder_norm: str = "instance", uncertainty: bool = True, seg_prior: float = 0.0):
        super().__init__()
        if inputs not in INPUTS:
            raise ValueError(f"task.inputs must be one of {list(INPUTS)}, got {inputs!r}")
        rows, cols = grid.shape
        if rows % 8 or cols % 8:
            raise ValueError(f"the BEV grid must have rows and cols divisible by 8, got {rows} x {cols}")
        self.use_cam = inputs != "lidar"
        self.use_lidar = inputs != "cam"
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.dims = (grid.z_cells, rows, cols)
        self.register_buffer("centers", torch.from_numpy(grid.voxel_centers()).float().reshape(-1, 3), persistent=False)
        dz = (grid.z_bounds[1] - grid.z_bounds[0]) / grid.z_cells
        self.register_buffer("grid_min", torch.tensor([grid.x_bounds[0], grid.y_bounds[0], grid.z_bounds[0]]),
                             persistent=False)
        self.register_buffer("cell", torch.tensor([grid.resolution, grid.resolution, dz]), persistent=False)
        self.encoder = ImageEncoder(encoder, feat_channels, encoder_base, merge_channels) if self.use_cam else nn.Identity()
        cin = (feat_channels * grid.z_cells if self.use_cam else 0) + (grid.z_cells if self.use_lidar else 0)
        self.compressor = nn.Sequential(nn.Conv2d(cin, feat_channels, 3, 1, 1, bias=False),
                                        nn.InstanceNorm2d(feat_channels), nn.GELU())
        self.decoder = BEVDecoder(feat_channels, decoder_width, decoder_norm, seg_prior)
        self.weights = UncertaintyWeights() if uncertainty else None

    def bev_features(self, images: torch.Tensor, intrinsics: torch.Tensor, cam2ego: torch.Tensor,
                     points: torch.Tensor, points_mask: torch.Tensor) -> torch.Tensor:
        """(B, C, rows, cols) BEV features after the compressor."""
        zc, rows, cols = self.dims
        parts: list[torch.Tensor] = []
        if self.use_cam:
            B, S = images.shape[0], images.shape[1]
            feats = self.encoder(images.reshape(B * S, images.shape[2], images.shape[3], images.shape[4]))
            vox = lift(feats, self.centers, intrinsics, cam2ego, self.image_size)  # (B, C, zc * rows * cols)
            parts.append(vox.reshape(B, -1, rows, cols))  # channel = c * zc + level
        if self.use_lidar:
            parts.append(occupancy(points, points_mask, self.grid_min, self.cell, self.dims))
        return self.compressor(torch.cat(parts, 1))

    def forward(self, images: torch.Tensor, intrinsics: torch.Tensor, cam2ego: torch.Tensor, points: torch.Tensor,
                points_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.decoder(self.bev_features(images, intrinsics, cam2ego, points, points_mask))
