"""A model of your own, for `scconv convert --factory examples.factory:small_convnet`.

A factory is any importable function that takes keyword arguments (from --model-kwargs and
--num-classes) and returns an nn.Module. The checkpoint records "examples.factory:small_convnet"
and the arguments, so `scconv_surgery.load()` calls it again to rebuild the model: keep the
function importable (installed, or in the working directory) where you load the checkpoint.

    scconv convert --factory examples.factory:small_convnet --model-kwargs width=64 \
        --num-classes 10 --input-size 3x64x64 --out small.pt
"""
from torch import nn


def small_convnet(width: int = 32, num_classes: int = 10) -> nn.Module:
    """A VGG-style net: a 3-channel stem, then three 3x3 conv-BN-ReLU stages (two strided)."""

    def stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                             nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))

    return nn.Sequential(
        stage(3, width, 1),
        stage(width, width, 1),
        stage(width, 2 * width, 2),
        stage(2 * width, 4 * width, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes),
    )
