"""FIERY's BEV decoder (``fiery/models/decoder.py``; used unchanged by Simple-BEV): a ResNet-18-style trunk
over the BEV feature map with three skip upsamplings back to full resolution, and one head per output.

``(B, C, Z, X)`` BEV features -> ``seg`` (B, 1, Z, X) logits, ``center`` (B, 1, Z, X) in [0, 1] (sigmoid),
``offset`` (B, 2, Z, X) in cells. Trunk: 7x7 stride-2 stem, ``layer1`` (64 ch, 1/2), ``layer2`` (128, 1/4),
``layer3`` (256, 1/8); each upsampling is bilinear x2 + conv3x3 + norm + ReLU added to a 1x1-projected skip.
Heads: conv3x3 + norm + ReLU + conv1x1. ``Z`` and ``X`` must be multiples of 8. Norms are InstanceNorm
(Simple-BEV) or BatchNorm (FIERY): ``norm``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import BasicBlock


def _norm(kind: str, c: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(c)
    if kind == "batch":
        return nn.BatchNorm2d(c)
    raise ValueError(f"task.decoder_norm must be 'instance' or 'batch', got {kind!r}")


class _Up(nn.Module):
    """Bilinear x2, conv3x3 + norm + ReLU, plus a 1x1-projected skip connection."""

    def __init__(self, cin: int, cskip: int, cout: int, norm: str):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), _norm(norm, cout), nn.ReLU(inplace=True))
        self.skip = nn.Conv2d(cskip, cout, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(x) + self.skip(skip)


def _head(c: int, cout: int, norm: str) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), _norm(norm, c), nn.ReLU(inplace=True), nn.Conv2d(c, cout, 1))


class BEVDecoder(nn.Module):
    """FIERY decoder with ``seg``, ``center`` and ``offset`` heads (see module docstring).

    Args:
        in_channels: ``C`` of the BEV features.
        width: channels of the trunk's first layer (FIERY: 64; layers use 1x, 2x, 4x) and of the
            upsampling path and heads (2x width = 128 as FIERY).
        norm: ``instance`` (Simple-BEV) or ``batch`` (FIERY).
        seg_prior: initial foreground probability of the seg head: its last bias starts at
            ``log(p / (1 - p))`` (the prior initialisation of RetinaNet, Lin et al. 2017), so training starts
            at the share of vehicle cells instead of 0.5; 0 leaves PyTorch's default initialisation.
    """

    def __init__(self, in_channels: int, width: int = 64, norm: str = "instance", seg_prior: float = 0.0):
        super().__init__()
        w1, w2, w3, up = width, width * 2, width * 4, width * 2
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w1, 7, 2, 3, bias=False), nn.BatchNorm2d(w1), nn.ReLU(inplace=True))
        self.layer1 = nn.Sequential(BasicBlock(w1, w1), BasicBlock(w1, w1))
        self.layer2 = nn.Sequential(BasicBlock(w1, w2, 2), BasicBlock(w2, w2))
        self.layer3 = nn.Sequential(BasicBlock(w2, w3, 2), BasicBlock(w3, w3))
        self.up3 = _Up(w3, w2, up, norm)
        self.up2 = _Up(up, w1, up, norm)
        self.up1 = _Up(up, in_channels, up, norm)
        self.seg = _head(up, 1, norm)
        self.center = _head(up, 1, norm)
        self.offset = _head(up, 2, norm)
        if not 0.0 <= seg_prior < 1.0:
            raise ValueError(f"seg_prior must be in [0, 1), got {seg_prior}")
        if seg_prior > 0.0:
            nn.init.constant_(self.seg[-1].bias, math.log(seg_prior / (1.0 - seg_prior)))

    def forward(self, bev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x1 = self.layer1(self.stem(bev))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x = self.up1(self.up2(self.up3(x3, x2), x1), bev)
        return self.seg(x), torch.sigmoid(self.center(x)), self.offset(x)
