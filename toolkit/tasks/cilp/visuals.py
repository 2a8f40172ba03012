"""TensorBoard images of the CILP family: input grids and similarity matrices (confusion matrices: ``tasks/common``)."""

from __future__ import annotations

import numpy as np
import torch


def input_grid(rgb: torch.Tensor, lidar: torch.Tensor | None, n: int = 8) -> torch.Tensor:
    """(3, 2 * 64, n * 64): RGB on top, the LiDAR hit mask / depth below (rows = zenith for viewing)."""
    import matplotlib

    rgb = rgb[:n].detach().float().cpu()
    top = torch.cat(list(rgb[:, :3]), dim=2)
    if lidar is None:
        return top
    lid = lidar[:n].detach().float().cpu()
    depth = lid[:, 1] if lid.shape[1] == 4 else lid[:, 0]  # y (forward) for XYZA, else range
    if lid.shape[1] == 4:
        depth = torch.where(lid[:, 3] > 0, depth, torch.zeros_like(depth))
    depth = (depth - depth.min()) / (depth.max() - depth.min() + 1e-6)
    colored = torch.from_numpy(matplotlib.colormaps["viridis"](depth.transpose(1, 2).numpy())[..., :3]).float()
    bottom = torch.cat(list(colored.permute(0, 3, 1, 2)), dim=2)
    return torch.cat([top, bottom], dim=1).clamp(0, 1)


def similarity_image(logits: torch.Tensor) -> torch.Tensor:
    """Image-to-LiDAR logits of one batch (diagonal = true pairs) as a colour image (3, n, n)."""
    import matplotlib

    s = logits.detach().float().cpu()
    s = (s - s.min()) / (s.max() - s.min() + 1e-6)
    img = matplotlib.colormaps["magma"](s.numpy())[..., :3]
    img = np.repeat(np.repeat(img, 4, axis=0), 4, axis=1)
    return torch.from_numpy(img).permute(2, 0, 1).float()
