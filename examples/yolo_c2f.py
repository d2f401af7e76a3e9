"""A YOLO-style network with C2f blocks (the YOLOv8 backbone and neck shape), for
`scconv convert --factory examples.yolo_c2f:yolo_c2f`.

Conv-BN-SiLU units, C2f blocks (a 1x1 conv to two halves, ``n`` bottlenecks of two 3x3 convs on
one half, every intermediate concatenated, a 1x1 conv out), SPPF, and a top-down / bottom-up neck
that returns three feature maps (strides 8, 16, 32), as a detector's head would read them. No
pretrained weights; it is here to measure which of its 3x3 convs SCConv speeds up.

    scconv profile --factory examples.yolo_c2f:yolo_c2f --input-size 3x320x320
    scconv convert --factory examples.yolo_c2f:yolo_c2f --input-size 3x320x320 --select faster --dry-run
"""
from __future__ import annotations

import torch
from torch import nn


class ConvUnit(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + SiLU, as YOLO's ``Conv``."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 units, with a residual add when ``shortcut``."""

    def __init__(self, c: int, shortcut: bool = True):
        super().__init__()
        self.cv1, self.cv2, self.add = ConvUnit(c, c, 3), ConvUnit(c, c, 3), shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """YOLOv8's C2f: split in two, ``n`` bottlenecks on the second half, concatenate every output."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = True):
        super().__init__()
        self.c = c_out // 2
        self.cv1 = ConvUnit(c_in, 2 * self.c, 1)
        self.cv2 = ConvUnit((2 + n) * self.c, c_out, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for block in self.m:
            y.append(block(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max pools, concatenated."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        hidden = c_in // 2
        self.cv1, self.cv2 = ConvUnit(c_in, hidden, 1), ConvUnit(4 * hidden, c_out, 1)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.cv2(torch.cat(y, 1))


class YoloC2f(nn.Module):
    """Backbone (stem, four strided units each followed by C2f, SPPF) and a PAN neck; returns
    ``[P3, P4, P5]`` feature maps."""

    def __init__(self, width: int = 32, depth: int = 1):
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width, 16 * width]
        self.stem = ConvUnit(3, w[0], 3, 2)
        self.down1, self.c2f1 = ConvUnit(w[0], w[1], 3, 2), C2f(w[1], w[1], depth)
        self.down2, self.c2f2 = ConvUnit(w[1], w[2], 3, 2), C2f(w[2], w[2], 2 * depth)
        self.down3, self.c2f3 = ConvUnit(w[2], w[3], 3, 2), C2f(w[3], w[3], 2 * depth)
        self.down4, self.c2f4 = ConvUnit(w[3], w[4], 3, 2), C2f(w[4], w[4], depth)
        self.sppf = SPPF(w[4], w[4])
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.top4 = C2f(w[4] + w[3], w[3], depth, shortcut=False)
        self.top3 = C2f(w[3] + w[2], w[2], depth, shortcut=False)
        self.down_p3, self.bottom4 = ConvUnit(w[2], w[2], 3, 2), C2f(w[2] + w[3], w[3], depth, shortcut=False)
        self.down_p4, self.bottom5 = ConvUnit(w[3], w[3], 3, 2), C2f(w[3] + w[4], w[4], depth, shortcut=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.c2f2(self.down2(self.c2f1(self.down1(self.stem(x)))))
        c4 = self.c2f3(self.down3(c3))
        c5 = self.sppf(self.c2f4(self.down4(c4)))
        t4 = self.top4(torch.cat([self.up(c5), c4], 1))
        p3 = self.top3(torch.cat([self.up(t4), c3], 1))
        p4 = self.bottom4(torch.cat([self.down_p3(p3), t4], 1))
        p5 = self.bottom5(torch.cat([self.down_p4(p4), c5], 1))
        return [p3, p4, p5]


def yolo_c2f(width: int = 32, depth: int = 1) -> nn.Module:
    """A YOLOv8-like network (``width=16, depth=1`` is about YOLOv8n's backbone and neck; 32 about "s")."""
    return YoloC2f(width, depth)
