"""Matplotlib figures as TensorBoard images: (3, H, W) float tensors in [0, 1]."""

from __future__ import annotations

import numpy as np
import torch


def figure_to_tensor(fig) -> torch.Tensor:
    """Render a matplotlib figure and close it: (3, H, W) float32 in [0, 1]."""
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.float32) / 255.0
    plt.close(fig)
    return torch.from_numpy(rgba.copy()).permute(2, 0, 1)


def confusion_image(cm: np.ndarray, class_names: list[str]) -> torch.Tensor:
    """A labelled confusion-matrix plot (rows: true class, columns: predicted), (3, H, W) in [0, 1]."""
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
    return figure_to_tensor(fig)
