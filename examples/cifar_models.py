"""The two CIFAR networks of the SCConv paper's Table 2, as factories for ``scconv convert``.

The paper (Li, Wen and He, CVPR 2023, Table 2) converts ResNeXt-29 8x64d and DenseNet-121 on
CIFAR-100 at 32x32. Neither timm nor torchvision has these CIFAR variants (their DenseNet-121
has an ImageNet stem; their ResNeXts are ImageNet 32x4d), so they are built here::

    scconv convert --factory examples.cifar_models:resnext29_8x64d --input-size 3x32x32 --dry-run
    scconv convert --factory examples.cifar_models:densenet121_cifar --input-size 3x32x32 --dry-run

The README's "The paper's CIFAR networks" section compares the deltas with the paper's rows.
"""
from __future__ import annotations

import torch
from torch import nn


class ResNeXtBottleneck(nn.Module):
    """1x1 reduce, 3x3 grouped conv (``cardinality`` groups, the stride), 1x1 expand, plus the
    shortcut (a strided 1x1 projection where the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, width: int, cardinality: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


def resnext29_8x64d(num_classes: int = 100, cardinality: int = 8, base_width: int = 64) -> nn.Module:
    """CIFAR ResNeXt-29 8x64d (Xie et al., CVPR 2017, section 5.3; facebookresearch/ResNeXt).

    A 3x3 stem of 64 channels, then 3 stages of 3 bottlenecks with outputs 256, 512, 1024;
    the grouped 3x3 of stage i has ``cardinality * base_width * 2**i`` channels (512, 1024,
    2048) in ``cardinality`` groups; stages 2 and 3 stride their first 3x3. 34.5 M parameters
    for 100 classes (the ResNeXt paper: 34.4 M for CIFAR-10), 5.40 GMACs at 32x32.
    """
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
    in_channels = 64
    for stage, out_channels in enumerate((256, 512, 1024)):
        width = cardinality * base_width * 2 ** stage
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(ResNeXtBottleneck(in_channels, out_channels, width, cardinality, stride))
            in_channels = out_channels
    return nn.Sequential(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(in_channels, num_classes))


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv to ``4 * growth_rate``, BN-ReLU-3x3 conv to ``growth_rate``, concatenated
    to the input (DenseNet-BC)."""

    def __init__(self, in_channels: int, growth_rate: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, 4 * growth_rate, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth_rate)
        self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, 3, padding=1, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.relu(self.bn1(x)))
        return torch.cat((self.conv2(self.relu(self.bn2(y))), x), dim=1)


def densenet121_cifar(num_classes: int = 100, growth_rate: int = 32) -> nn.Module:
    """CIFAR DenseNet-121 (DenseNet-BC, Huang et al., CVPR 2017): blocks of 6, 12, 24 and 16 dense
    layers, growth rate 32, compression 0.5, a 3x3 stem of 64 channels and no max-pool, as
    CIFAR code has it (kuangliu/pytorch-cifar). Its 58 dense 3x3 convs map 128 to 32 channels.
    7.05 M parameters for 100 classes (the paper's row), 0.898 GMACs at 32x32 (the paper's
    898.23 M FLOPs).
    """
    channels = 2 * growth_rate
    layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1, bias=False)]
    for index, depth in enumerate((6, 12, 24, 16)):
        for _ in range(depth):
            layers.append(DenseLayer(channels, growth_rate))
            channels += growth_rate
        if index < 3:  # transition: BN-ReLU-1x1 conv halving the channels, 2x2 average pool
            layers += [nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels // 2, 1, bias=False),
                       nn.AvgPool2d(2)]
            channels //= 2
    layers += [nn.BatchNorm2d(channels), nn.ReLU()]
    return nn.Sequential(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(channels, num_classes))
