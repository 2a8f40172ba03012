"""Image encoders of the BEV family: trunks cut at stride 8, the stride-16 layer upsampled and merged.

Simple-BEV (Harley et al. 2022, ``nets/segnet.py`` ``Encoder_res101``; ``shared/notes/bev.md`` section 2):
ResNet layers up to ``layer2`` (stride 8) and ``layer3`` (stride 16); ``layer3`` is upsampled x2 (bilinear),
concatenated with ``layer2``, passed through 2 x (conv3x3 + InstanceNorm + ReLU) to 512 channels and a
1x1 convolution to ``C`` channels. Output: ``(N, C, H / 8, W / 8)``.

No torchvision here (its wheels do not load with this machine's CPU PyTorch), so the ResNet is written
out (He et al. 2016: BasicBlock for 18/34, Bottleneck for 50/101, torchvision's layer layout and state-dict
names, so a torchvision checkpoint loads with ``task.encoder_weights``). EfficientNet-B0/B4 come from the
pure-PyTorch ``efficientnet-pytorch`` package (optional: ``pip install efficientnet-pytorch``), cut as
Simple-BEV cuts them (reduction 3 = stride 8 and reduction 4 = stride 16 endpoints). Weights are never
downloaded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RESNET_LAYERS = {"resnet18": ("basic", [2, 2, 2]), "resnet34": ("basic", [3, 4, 6]),
                 "resnet50": ("bottleneck", [3, 4, 6]), "resnet101": ("bottleneck", [3, 4, 23])}
ENCODERS = tuple(RESNET_LAYERS) + ("effb0", "effb4", "tiny")


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.downsample(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + self.downsample(x))


def _layer(block, cin: int, width: int, blocks: int, stride: int) -> tuple[nn.Sequential, int]:
    layers = [block(cin, width, stride)]
    cout = width * block.expansion
    layers += [block(cout, width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers), cout


class ResNetTrunk(nn.Module):
    """ResNet stem + ``layer1..layer3`` (torchvision names): image -> (stride-8, stride-16) features.

    Args:
        depth: ``resnet18|34|50|101``.
        base: width of the stem and ``layer1`` (64 as torchvision; smaller for CPU presets).
    """

    def __init__(self, depth: str = "resnet101", base: int = 64):
        super().__init__()
        kind, blocks = RESNET_LAYERS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1, c1 = _layer(block, base, base, blocks[0], 1)
        self.layer2, c2 = _layer(block, c1, base * 2, blocks[1], 2)
        self.layer3, c3 = _layer(block, c2, base * 4, blocks[2], 2)
        self.channels = (c2, c3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        s8 = self.layer2(self.layer1(x))
        return s8, self.layer3(s8)


class TinyTrunk(nn.Module):
    """A small CPU trunk with the same outputs as :class:`ResNetTrunk`: (stride 8, stride 16) features."""

    def __init__(self, base: int = 16):
        super().__init__()

        def down(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                 nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.s8 = nn.Sequential(down(3, base), down(base, base * 2), down(base * 2, base * 4))
        self.s16 = down(base * 4, base * 8)
        self.channels = (base * 4, base * 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s8 = self.s8(x)
        return s8, self.s16(s8)


class EfficientNetTrunk(nn.Module):
    """EfficientNet-B0/B4 from ``efficientnet-pytorch``, endpoints ``reduction_3`` (stride 8) and
    ``reduction_4`` (stride 16), randomly initialised (no download).

    Raises:
        ImportError: naming the package when ``efficientnet-pytorch`` is not installed.
    """

    def __init__(self, variant: str = "effb0"):
        super().__init__()
        try:
            from efficientnet_pytorch import EfficientNet
        except ImportError as exc:
            raise ImportError("task.encoder effb0/effb4 needs the package efficientnet-pytorch "
                              "(pip install efficientnet-pytorch)") from exc
        self.net = EfficientNet.from_name("efficientnet-b0" if variant == "effb0" else "efficientnet-b4")
        with torch.no_grad():
            ends = self.net.extract_endpoints(torch.zeros(1, 3, 64, 64))
        self.channels = (ends["reduction_3"].shape[1], ends["reduction_4"].shape[1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ends = self.net.extract_endpoints(x)
        return ends["reduction_3"], ends["reduction_4"]


class ImageEncoder(nn.Module):
    """Simple-BEV's image encoder: ``(N, 3, H, W)`` float in [0, 1] -> ``(N, C, H / 8, W / 8)``.

    Images are ImageNet-normalised inside (mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225), as Simple-BEV
    does. ``H`` and ``W`` must be multiples of 16.

    Args:
        name: one of :data:`ENCODERS` (``tiny`` is a small CPU trunk).
        out_channels: ``C``.
        base: stem width for ResNets / ``tiny`` (ResNet default 64).
        merge_channels: width of the merge convolutions (Simple-BEV: 512).

    Raises:
        ValueError: for an unknown ``name``.
    """

    def __init__(self, name: str = "resnet101", out_channels: int = 128, base: int = 64, merge_channels: int = 512):
        super().__init__()
        if name in RESNET_LAYERS:
            self.trunk = ResNetTrunk(name, base)
        elif name == "tiny":
            self.trunk = TinyTrunk(base)
        elif name in ("effb0", "effb4"):
            self.trunk = EfficientNetTrunk(name)
        else:
            raise ValueError(f"task.encoder must be one of {list(ENCODERS)}, got {name!r}")
        c8, c16 = self.trunk.channels
        self.merge = nn.Sequential(
            nn.Conv2d(c8 + c16, merge_channels, 3, 1, 1, bias=False), nn.InstanceNorm2d(merge_channels), nn.ReLU(inplace=True),
            nn.Conv2d(merge_channels, merge_channels, 3, 1, 1, bias=False), nn.InstanceNorm2d(merge_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(merge_channels, out_channels, 1))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        s8, s16 = self.trunk(x)
        s16 = F.interpolate(s16, size=s8.shape[-2:], mode="bilinear", align_corners=False)
        return self.merge(torch.cat([s8, s16], 1))
