"""CIFAR-style ResNets (He et al. 2016, section 4.2): ``resnet20`` and ``resnet56``.

Three stages of BasicBlocks with 16/32/64 channels, a 3x3 stem at full resolution,
global average pooling and one Linear. Downsampling shortcuts are option B (1x1 conv +
BN) rather than the paper's zero-padding option A: a conv shortcut gives Torch-Pruning a
layer to couple with the block outputs, so each stage's residual channels form one
prunable group.

Prunable groups of ``resnet20`` (Linear ignored): 9 block-internal groups (conv1 of each
block, whose output feeds only that block's conv2) plus 3 stage groups (the residual
stream of each stage, which ties stem/shortcut conv and every block's conv2 together).
"""

from __future__ import annotations

import torch
from torch import nn

from hwprune.models.init import init_weights
from hwprune.models.registry import register_model

_STAGE_CHANNELS = (16, 32, 64)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images; ``blocks_per_stage`` is n."""

    def __init__(self, blocks_per_stage: int, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, _STAGE_CHANNELS[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STAGE_CHANNELS[0])
        self.relu = nn.ReLU()
        stages = []
        channels = _STAGE_CHANNELS[0]
        for stage_index, stage_channels in enumerate(_STAGE_CHANNELS):
            blocks = []
            for block_index in range(blocks_per_stage):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(channels, stage_channels, stride))
                channels = stage_channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        # torch.flatten exports as a single ONNX Flatten, which TensorRT and ORT fuse well.
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model
def resnet20(in_channels: int = 3, num_classes: int = 10, input_size=(32, 32)) -> CifarResNet:
    """ResNet-20 (0.27M params): 3 stages x 3 BasicBlocks. ``input_size`` is not needed."""
    return CifarResNet(3, in_channels, num_classes)


@register_model
def resnet56(in_channels: int = 3, num_classes: int = 10, input_size=(32, 32)) -> CifarResNet:
    """ResNet-56 (0.85M params): 3 stages x 9 BasicBlocks. ``input_size`` is not needed."""
    return CifarResNet(9, in_channels, num_classes)
