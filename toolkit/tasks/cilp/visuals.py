"""TensorBoard images for the CILP tasks: input grids, confusion matrices, similarity matrices."""

from __future__ import annotations

import numpy as np
import torch


def _figure_to_tensor(fig) -> torch.Tensor:
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.float32) / 255.0
    import matplotlib.pyplot as plt

    plt.close(fig)
    return torch.from_numpy(rgba.copy()).permute(2, 0, 1)


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


def confusion_image(cm: np.ndarray, class_names: list[str]) -> torch.Tensor:
    """A labelled confusion-matrix plot (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.2, 3.0), dpi=100)
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", color="black")
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    return _figure_to_tensor(fig)


def similarity_image(logits: torch.Tensor) -> torch.Tensor:
    """Image-to-LiDAR logits of one batch (diagonal = true pairs) as a colour image (3, n, n)."""
    import matplotlib

    s = logits.detach().float().cpu()
    s = (s - s.min()) / (s.max() - s.min() + 1e-6)
    img = matplotlib.colormaps["magma"](s.numpy())[..., :3]
    img = np.repeat(np.repeat(img, 4, axis=0), 4, axis=1)
    return torch.from_numpy(img).permute(2, 0, 1).float()
