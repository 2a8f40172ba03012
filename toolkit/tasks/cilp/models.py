"""Networks of the CILP assessment (NVIDIA DLI ``05_Assessment`` / handsoncv; facts in
``shared/notes/cilp-fusion-embedding.md`` section 1), for 64 x 64 RGBA images and LiDAR range images.

* :class:`ConvTrunk`: 4 x [conv3x3 pad 1 -> ReLU -> downsample], channels 50/100/200/200, 64 -> 4 pixels;
  downsampling by MaxPool2d(2) or, for the ablation, a strided conv3x3 + ReLU.
* :class:`Embedder`: trunk -> flatten (3200) -> Linear -> ReLU -> Linear to ``emb_dim`` [-> L2 norm].
* :class:`LateFusion`: two vector embedders -> concat -> Linear -> ReLU -> classes.
* :class:`IntermediateFusion`: two trunks -> feature maps concatenated, added or multiplied ->
  flatten -> 512 -> 128 -> classes.
* :class:`UnimodalClassifier`: one trunk -> flatten (the "embedding", 3200) -> 100 -> classes (the LiDAR
  classifier whose head ``rgb2lidar`` reuses).
* :class:`CILPModel`: image and LiDAR embedders with a learnable logit scale (CLIP temperature).
* :class:`Projector`: CILP image embedding -> LiDAR classifier embedding (MLP).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


NORMS = ("none", "batch", "group")


def _norm(kind: str, channels: int) -> list[nn.Module]:
    if kind == "batch":
        return [nn.BatchNorm2d(channels)]
    if kind == "group":
        return [nn.GroupNorm(math.gcd(channels, 10), channels)]
    if kind == "none":
        return []
    raise ValueError(f"norm must be one of {list(NORMS)}, got {kind!r}")


class ConvTrunk(nn.Module):
    """(B, in_channels, 64, 64) -> (B, channels[-1], 4, 4).

    Args:
        downsample: ``maxpool`` (DLI baseline) or ``stride`` (conv3x3 stride 2 + ReLU, the ablation).
        norm: ``none`` (the DLI networks), ``batch`` or ``group`` (GroupNorm, gcd(C, 10) groups) after
            each 3x3 convolution.

    Raises:
        ValueError: for an unknown ``norm``.
    """

    def __init__(self, in_channels: int, channels: list[int], downsample: str = "maxpool", norm: str = "none"):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for width in channels:
            layers += [nn.Conv2d(c, width, 3, padding=1), *_norm(norm, width), nn.ReLU(inplace=True)]
            if downsample == "stride":
                layers += [nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            else:
                layers.append(nn.MaxPool2d(2))
            c = width
        self.net = nn.Sequential(*layers)
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Embedder(nn.Module):
    """Trunk + MLP head: (B, C, 64, 64) -> (B, emb_dim), L2-normalised if ``normalize``."""

    def __init__(self, in_channels: int, channels: list[int], emb_dim: int, hidden: int = 100,
                 downsample: str = "maxpool", normalize: bool = False, size: int = 64, norm: str = "none"):
        super().__init__()
        self.trunk = ConvTrunk(in_channels, channels, downsample, norm)
        flat = self.trunk.out_channels * (size // 16) ** 2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, emb_dim))
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.trunk(x))
        return F.normalize(z, dim=-1) if self.normalize else z


class LateFusion(nn.Module):
    """Late fusion: RGB and LiDAR vector embeddings concatenated, then Linear -> ReLU -> classes."""

    def __init__(self, rgb_channels: int, lidar_channels: int, channels: list[int], emb_dim: int = 128,
                 hidden: int = 1280, num_classes: int = 2, downsample: str = "maxpool", norm: str = "none"):
        super().__init__()
        self.rgb = Embedder(rgb_channels, channels, emb_dim, downsample=downsample, norm=norm)
        self.lidar = Embedder(lidar_channels, channels, emb_dim, downsample=downsample, norm=norm)
        self.classifier = nn.Sequential(nn.Linear(2 * emb_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, rgb: torch.Tensor, lidar: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat([self.rgb(rgb), self.lidar(lidar)], dim=1))


class IntermediateFusion(nn.Module):
    """Intermediate fusion of the two trunks' (C, 4, 4) maps by ``concat``, ``add`` or ``mul``."""

    def __init__(self, rgb_channels: int, lidar_channels: int, channels: list[int], mode: str = "concat",
                 num_classes: int = 2, downsample: str = "maxpool", norm: str = "none"):
        super().__init__()
        if mode not in ("concat", "add", "mul"):
            raise ValueError(f"intermediate fusion mode must be concat, add or mul, got {mode!r}")
        self.mode = mode
        self.rgb = ConvTrunk(rgb_channels, channels, downsample, norm)
        self.lidar = ConvTrunk(lidar_channels, channels, downsample, norm)
        flat = channels[-1] * 16 * (2 if mode == "concat" else 1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, 512), nn.ReLU(inplace=True), nn.Linear(512, 128),
                                        nn.ReLU(inplace=True), nn.Linear(128, num_classes))

    def forward(self, rgb: torch.Tensor, lidar: torch.Tensor) -> torch.Tensor:
        a, b = self.rgb(rgb), self.lidar(lidar)
        if self.mode == "concat":
            fused = torch.cat([a, b], dim=1)
        elif self.mode == "add":
            fused = a + b
        else:
            fused = a * b
        return self.classifier(fused)


class UnimodalClassifier(nn.Module):
    """One modality: trunk -> flatten (:meth:`embed`, the 3200-d embedding) -> 100 -> classes (``head``)."""

    def __init__(self, in_channels: int, channels: list[int], num_classes: int = 2, hidden: int = 100,
                 downsample: str = "maxpool", norm: str = "none"):
        super().__init__()
        self.trunk = ConvTrunk(in_channels, channels, downsample, norm)
        self.embed_dim = channels[-1] * 16
        self.head = nn.Sequential(nn.Linear(self.embed_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class CILPModel(nn.Module):
    """Image and LiDAR embedders (L2-normalised) and the learnable log logit scale (CLIP: init ln(1/0.07))."""

    def __init__(self, rgb_channels: int, lidar_channels: int, channels: list[int], emb_dim: int = 200,
                 hidden: int = 100, init_logit_scale: float = math.log(1 / 0.07), norm: str = "none"):
        super().__init__()
        self.image = Embedder(rgb_channels, channels, emb_dim, hidden, normalize=True, norm=norm)
        self.lidar = Embedder(lidar_channels, channels, emb_dim, hidden, normalize=True, norm=norm)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.lidar_trunk_locked = False  # see lock_lidar_trunk

    def lock_lidar_trunk(self, state: dict[str, torch.Tensor]) -> None:
        """Load the LiDAR trunk's weights (e.g. a trained LiDAR classifier's) and lock them: no gradients,
        always in eval mode (BatchNorm statistics fixed). The LiDAR head and the image embedder still train
        (LiT, "locked-image tuning", Zhai et al. 2022, with the LiDAR tower locked).

        Raises:
            RuntimeError: if ``state`` does not fit the trunk.
        """
        self.lidar.trunk.load_state_dict(state)
        self.lidar.trunk.requires_grad_(False).eval()
        self.lidar_trunk_locked = True

    def train(self, mode: bool = True) -> "CILPModel":
        super().train(mode)
        if self.lidar_trunk_locked:
            self.lidar.trunk.eval()
        return self

    def forward(self, rgb: torch.Tensor, lidar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.image(rgb), self.lidar(lidar), self.logit_scale.exp()


class Projector(nn.Module):
    """MLP from the CILP image embedding (``in_dim``) to the LiDAR classifier's embedding (``out_dim``)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(inplace=True)]
            d = h
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
