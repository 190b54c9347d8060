"""Built-in networks that exercise every conv feature the method must handle.

`TinySegNet` is a small segmentation net with BN, ReLU, residual adds, stride, dilation,
depthwise and 'same'-padded convs. `ResNetLike` is a ResNet-18-shaped backbone, for MAC ratios.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Block(nn.Module):
    """A ResNet basic block: conv-BN-ReLU-conv-BN plus a (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.proj is None else self.proj(x)))


class DepthwiseBlock(nn.Module):
    """MobileNet-style inverted residual: 1x1 expand, depthwise 3x3, 1x1 project, residual add."""

    def __init__(self, c: int, expand: int = 2, stride: int = 1) -> None:
        super().__init__()
        h = c * expand
        self.expand = nn.Conv2d(c, h, 1)
        self.dw = nn.Conv2d(h, h, 3, stride, 1, groups=h)
        self.project = nn.Conv2d(h, c, 1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(self.project(F.relu6(self.dw(F.relu6(self.expand(x))))))
        return y + x if self.stride == 1 else y


class TinySegNet(nn.Module):
    """Per-pixel classifier with every conv feature: stride, dilation, depthwise, 'same', bias."""

    def __init__(self, num_classes: int = 3, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Conv2d(3, w, 3, 2, 1)
        self.stem_bn = nn.BatchNorm2d(w)
        self.block1 = Block(w, 2 * w, stride=2)
        self.block2 = Block(2 * w, 2 * w, dilation=2)
        self.mbconv = DepthwiseBlock(2 * w)
        self.same = nn.Conv2d(2 * w, 2 * w, (3, 5), padding="same", bias=True)
        self.head = nn.Conv2d(2 * w, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        y = F.relu(self.stem_bn(self.stem(x)))
        y = self.mbconv(self.block2(self.block1(y)))
        y = F.relu(self.same(y))
        return F.interpolate(self.head(y), size=size, mode="bilinear", align_corners=False)


class ResNetLike(nn.Module):
    """ResNet-18 layout (64-128-256-512 basic blocks), dense-prediction head instead of a classifier."""

    def __init__(self, num_classes: int = 19, widths: tuple[int, ...] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            layers += [Block(cin, w, 1 if i == 0 else 2), Block(w, w)]
            cin = w
        self.layers = nn.Sequential(*layers)
        self.head = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layers(self.stem(x)))
