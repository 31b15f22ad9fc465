"""CIFAR-style VGG with batch norm: ``vgg11_bn`` and ``vgg16_bn``.

conv3x3-BN-ReLU stacks separated by 2x2 max-pools, then global average pooling and a
single Linear(512, num_classes) (the CIFAR variant, not ImageNet's three-layer head).
The max-pools are planned from ``input_size``: a pool that would shrink a side below 1
pixel is left out, so 28x28 inputs (28->14->7->3->1) keep four of the five pools.
Every conv output feeds only the next conv, so each conv is its own prunable group.
"""

from __future__ import annotations

import torch
from torch import nn

from hwprune.models.init import init_weights
from hwprune.models.registry import register_model

# "M" is a 2x2 max-pool; integers are conv3x3 output channels.
_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
              512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """Feature stack from a config list, global average pool, one Linear."""

    def __init__(
        self,
        config: list[int | str],
        in_channels: int = 3,
        num_classes: int = 10,
        input_size: tuple[int, int] = (32, 32),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        height, width = input_size
        for item in config:
            if item == "M":
                # MaxPool2d(2, 2) floors: a side of 1 would become 0, so skip that pool.
                if height // 2 >= 1 and width // 2 >= 1:
                    layers.append(nn.MaxPool2d(2, 2))
                    height, width = height // 2, width // 2
                continue
            layers += [
                nn.Conv2d(channels, int(item), 3, padding=1, bias=False),
                nn.BatchNorm2d(int(item)),
                nn.ReLU(),
            ]
            channels = int(item)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model
def vgg11_bn(in_channels: int = 3, num_classes: int = 10, input_size=(32, 32)) -> VGG:
    """VGG-11 with batch norm (8 convs); pools planned from ``input_size``."""
    return VGG(_CONFIGS["vgg11"], in_channels, num_classes, tuple(input_size))


@register_model
def vgg16_bn(in_channels: int = 3, num_classes: int = 10, input_size=(32, 32)) -> VGG:
    """VGG-16 with batch norm (13 convs); pools planned from ``input_size``."""
    return VGG(_CONFIGS["vgg16"], in_channels, num_classes, tuple(input_size))
