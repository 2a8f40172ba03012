"""Patch embeddings: an image-like (N, C, H, W) tensor -> (N, dim, H / patch, W / patch) token grid.

``linear``: one Conv2d with kernel = stride = ``patch`` (ViT's patch embedding; the seed's tokenizer).
``conv``: log2(patch) Conv3x3 stride-2 layers (BatchNorm + ReLU between them, widths rising to ``dim``), the
"early convolutions" stem of Xiao et al., "Early Convolutions Help Transformers See Better" (NeurIPS 2021),
which trains more stably and needs less data than the linear one; here it also stands in for PointPillars'
2-D backbone on the pseudo-image. Same token grid, receptive fields overlapping across patch borders.
"""

from __future__ import annotations

from torch import nn

STEMS = ("conv", "linear")


def patch_embedding(channels: int, dim: int, patch: int, stem: str = "conv") -> nn.Module:
    """The patch embedding of ``stem`` (see the module docstring).

    Raises:
        ValueError: an unknown ``stem``, or ``conv`` with a ``patch`` that is not a power of 2 (>= 2).
    """
    if stem == "linear":
        return nn.Conv2d(channels, dim, patch, patch)
    if stem != "conv":
        raise ValueError(f"stem must be one of {list(STEMS)}, got {stem!r}")
    steps = patch.bit_length() - 1
    if patch < 2 or 2 ** steps != patch:
        raise ValueError(f"the conv stem needs a patch size that is a power of 2, got {patch}")
    widths = [channels] + [max(8, dim >> (steps - i)) for i in range(1, steps)] + [dim]
    layers: list[nn.Module] = []
    for i in range(steps):
        layers.append(nn.Conv2d(widths[i], widths[i + 1], 3, 2, 1, bias=i == steps - 1))
        if i < steps - 1:
            layers += [nn.BatchNorm2d(widths[i + 1]), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)
