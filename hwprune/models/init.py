"""Weight initialisation shared by the zoo models (He-normal convs, unit BN, small classifier)."""

from __future__ import annotations

import torch.nn as nn


def init_weights(model: nn.Module) -> None:
    """He-normal (fan-out) convs, BN scale 1 and shift 0, classifier N(0, 0.01) with zero bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
