"""MobileNetV2 (Sandler et al. 2018) with a width multiplier, sized for small or large inputs.

Standard setting table, inverted residuals (1x1 expand, 3x3 depthwise, 1x1 linear
project), ReLU6, channel counts rounded with ``_make_divisible(., 8)``.

Strides depend on ``input_size``: when the smaller side is under 64 pixels (28x28
Fashion-MNIST, 32x32 CIFAR) the stem and the first downsampling stage (24 channels) use
stride 1 instead of 2, the usual CIFAR adaptation, so the network downsamples 8x instead
of 32x and a 28x28 input still reaches the last stage at 4x4. From 64 pixels up the
standard ImageNet strides are used (224x224 -> 7x7).

Pruning note: a depthwise conv couples its input and output channels, so each block's
expand conv, depthwise conv and their BNs form one group; blocks with a residual
connection tie their project conv to the stage's residual stream.
"""

from __future__ import annotations

import torch
from torch import nn

from hwprune.models.init import init_weights
from hwprune.models.registry import register_model

# (expand_ratio t, output channels c, repeats n, first stride s) from the paper, Table 2.
_INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_SMALL_INPUT_SIDE_PX = 64


def _make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to a multiple of ``divisor`` without going more than 10% below it."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias) + BN + ReLU6; ``groups`` = channels makes it depthwise."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(),
        )


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear project, with identity skip when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_channels, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 backbone + global average pool + dropout + Linear."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        input_size: tuple[int, int] = (224, 224),
        width_mult: float = 1.0,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        small_input = min(input_size) < _SMALL_INPUT_SIDE_PX
        stem_channels = _make_divisible(32 * width_mult)
        self.last_channels = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [
            ConvBNReLU6(in_channels, stem_channels, stride=1 if small_input else 2)
        ]
        channels = stem_channels
        first_downsampling_stage = True
        for expand_ratio, c, repeats, stride in _INVERTED_RESIDUAL_SETTING:
            out_channels = _make_divisible(c * width_mult)
            if stride == 2 and first_downsampling_stage:
                first_downsampling_stage = False
                if small_input:
                    stride = 1  # keep resolution: 28x28 would otherwise end at 1x1
            for i in range(repeats):
                features.append(
                    InvertedResidual(channels, out_channels, stride if i == 0 else 1, expand_ratio)
                )
                channels = out_channels
        features.append(ConvBNReLU6(channels, self.last_channels, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.last_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(self.dropout(x))


@register_model
def mobilenetv2(
    in_channels: int = 3,
    num_classes: int = 10,
    input_size=(224, 224),
    width_mult: float = 1.0,
    dropout: float = 0.2,
) -> MobileNetV2:
    """MobileNetV2; stem + first downsampling stage use stride 1 when min(input_size) < 64.

    Example:
        >>> import torch
        >>> m = mobilenetv2(in_channels=1, num_classes=10, input_size=(28, 28), width_mult=0.5)
        >>> m(torch.zeros(1, 1, 28, 28)).shape
        torch.Size([1, 10])
    """
    return MobileNetV2(in_channels, num_classes, tuple(input_size), width_mult, dropout)
