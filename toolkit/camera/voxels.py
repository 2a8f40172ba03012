"""Batched torch projection for camera BEV models: ego points -> pixels of every camera, and voxel centres ->
``grid_sample`` coordinates with a validity mask (the parameter-free "lift" of Simple-BEV).

Shapes: ``B`` samples, ``S`` cameras, ``N`` points. Intrinsics ``(B, S, 3, 3)`` are those of the image
(or feature map) size given; extrinsics ``cam2ego`` ``(B, S, 4, 4)`` map camera-frame points into the ego frame
the points are in (the shards' ``cam2keyego`` for the keyframe ego frame). Pixels follow
:data:`toolkit.camera.geometry.PIXEL_EDGE_OFFSET` (``d`` = 0.5): ``(u, v)`` = (column, row), pixel ``i``'s
centre at ``i``.

``grid_sample`` normalisation (``align_corners=False``, where -1 and +1 are the outer edges of the border
pixels): ``gx = (u + d) / W * 2 - 1``, ``gy = (v + d) / H * 2 - 1``, i.e. ``(u + 0.5) / W * 2 - 1``. The same
normalised grid samples any feature map that covers the image exactly (stride-8 features of an ``H x W``
image: ``H/8 x W/8``), since the edges coincide. Simple-BEV normalises with ``2 u / (W - 1) - 1`` but samples with ``align_corners=False``,
which skews by up to half a feature pixel at the borders (notes/bev.md section 2); this module does not.
"""

from __future__ import annotations

import torch

from .geometry import PIXEL_EDGE_OFFSET

__all__ = ["invert_rigid", "project_points", "voxel_to_pixel"]


def invert_rigid(T: torch.Tensor) -> torch.Tensor:
    """Exact inverse of rigid (..., 4, 4) transforms, ``[[R^T, -R^T t], [0, 1]]``; same dtype and device."""
    if not torch.jit.is_scripting() and T.shape[-2:] != (4, 4):  # shape checks in eager mode (TorchScript exports)
        raise ValueError(f"T must have shape (..., 4, 4), got {tuple(T.shape)}")
    rt = T[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(T)
    out[..., :3, :3] = rt
    out[..., :3, 3] = -(rt @ T[..., :3, 3:]).squeeze(-1)
    out[..., 3, 3] = 1
    return out


def _check(points: torch.Tensor, intrinsics: torch.Tensor, cam2ego: torch.Tensor) -> torch.Tensor:
    if intrinsics.dim() != 4 or intrinsics.shape[-2:] != (3, 3):
        raise ValueError(f"intrinsics must be (B, S, 3, 3), got {tuple(intrinsics.shape)}")
    if cam2ego.shape != (*intrinsics.shape[:2], 4, 4):
        raise ValueError(f"cam2ego must be (B, S, 4, 4) = {(*intrinsics.shape[:2], 4, 4)}, got {tuple(cam2ego.shape)}")
    if points.shape[-1] != 3 or points.dim() not in (2, 3):
        raise ValueError(f"points must be (N, 3) or (B, N, 3), got {tuple(points.shape)}")
    if points.dim() == 3 and points.shape[0] != intrinsics.shape[0]:
        raise ValueError(f"points batch {points.shape[0]} != intrinsics batch {intrinsics.shape[0]}")
    return points if points.dim() == 3 else points.unsqueeze(0).expand(intrinsics.shape[0], -1, -1)


def project_points(points: torch.Tensor, intrinsics: torch.Tensor, cam2ego: torch.Tensor,
                   min_depth: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Project ego-frame points into every camera (the torch twin of
    :func:`toolkit.camera.geometry.project_ego_points`).

    Args:
        points: (N, 3) or (B, N, 3) ego-frame points, metres.
        intrinsics: (B, S, 3, 3) pixels; cam2ego: (B, S, 4, 4) rigid camera -> ego.
        min_depth: depth is clamped to at least this before dividing (metres; points behind the camera get
            finite but meaningless pixels, so mask on ``depth``).

    Returns:
        ``uv`` (B, S, N, 2) pixels ``(u, v)`` and ``depth`` (B, S, N) camera z in metres, in the dtype of the
        inputs (use float32 or float64 for all three).

    Raises:
        ValueError: on mismatched shapes.
    """
    if not torch.jit.is_scripting():  # shape checks in eager mode; the lifting is scripted into exports
        _check(points, intrinsics, cam2ego)
    pts = points if points.dim() == 3 else points.unsqueeze(0).expand(intrinsics.shape[0], -1, -1)
    ego2cam = invert_rigid(cam2ego)
    # (B, S, N, 3) = R (B, S, 3, 3) applied to (B, 1, N, 3) + t
    cam = torch.einsum("bsij,bnj->bsni", ego2cam[..., :3, :3], pts) + ego2cam[..., None, :3, 3]
    depth = cam[..., 2]
    pix = torch.einsum("bsij,bsnj->bsni", intrinsics, cam)
    uv = pix[..., :2] / pix[..., 2:3].clamp(min=min_depth)
    return uv, depth


def voxel_to_pixel(centers: torch.Tensor, intrinsics: torch.Tensor, cam2ego: torch.Tensor,
                   image_size: tuple[int, int], min_depth: float = 0.1,
                   edge_offset: float = PIXEL_EDGE_OFFSET) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxel centres -> normalised sampling coordinates in every camera, and where they are valid.

    Args:
        centers: (N, 3) or (B, N, 3) ego-frame voxel centres, metres (e.g.
            ``torch.from_numpy(BEVGrid().voxel_centers()).reshape(-1, 3)``: ``(Z, X, Y)`` flattened, z level
            slowest, then grid rows along ego x, then columns along ego y).
        intrinsics: (B, S, 3, 3) for an image of ``image_size``; cam2ego: (B, S, 4, 4).
        image_size: ``(H, W)`` pixels of the image the intrinsics belong to.
        min_depth: nearest valid camera depth, metres.

    Returns:
        ``grid`` (B, S, N, 2): ``(gx, gy)`` for ``F.grid_sample(..., align_corners=False)`` of feature maps
        covering the image (module docstring); ``valid`` (B, S, N) bool: ``depth > min_depth`` and the
        centre falls inside the image, ``-0.5 < u < W - 0.5`` and ``-0.5 < v < H - 0.5`` (``|g| < 1``;
        Simple-BEV's validity).
        Sample with ``grid.view(B * S, 1, N, 2)`` on ``(B * S, C, h, w)`` features and zero the invalid ones.

    Raises:
        ValueError: on mismatched shapes or a non-positive image size.
    """
    H, W = image_size
    if H < 1 or W < 1:
        raise ValueError(f"image_size must be positive (H, W), got {image_size}")
    uv, depth = project_points(centers, intrinsics, cam2ego)
    size = torch.tensor([W, H], dtype=uv.dtype, device=uv.device)
    grid = (uv + edge_offset) / size * 2 - 1  # a default argument, not the global: TorchScript reads no globals
    valid = (depth > min_depth) & (grid.abs() < 1).all(-1)
    return grid, valid
