"""How a randomly initialised encoder starts, as a named and recorded choice.

- `torchvision` (the default of the random baseline): torchvision's ResNet initialisation, the
  one Lao et al.'s "None" row used: every convolution Kaiming-normal (fan_out, ReLU gain), every
  BatchNorm/GroupNorm gamma = 1 and beta = 0, and no zero-initialised residual branch.
- `timm`: timm's ResNet initialisation, which zero-initialises the last BatchNorm of every
  residual block (`zero_init_last`). That is a good start for training, but as a frozen or linear
  baseline it is a crippled network: every residual branch outputs zero, so the encoder is its
  stem and shortcuts only. Pre-training methods start from it (recorded as `encoder_init`).

The schemes differ for convolutional encoders only. ViTs keep timm's initialisation (truncated
normal, zero biases, the paper defines no other), and a user encoder (`entry:`) its own: their
effective scheme is `timm` or `entry`, whatever was asked, and that is what a record says.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

RandomInit = Literal["torchvision", "timm"]
RANDOM_INITS = ("torchvision", "timm")
DEFAULT_RANDOM_INIT = "torchvision"


def effective_random_init(family: str, requested: str) -> str:
    """The scheme an encoder of this family actually gets when `requested` is asked for."""
    if requested not in RANDOM_INITS:
        raise ValueError(f"unknown random init {requested!r}; available: {', '.join(RANDOM_INITS)}")
    if family == "cnn":
        return requested
    return "entry" if family == "entry" else "timm"


def torchvision_init_(module: nn.Module) -> nn.Module:
    """Re-initialise `module` in place as torchvision's ResNet constructor does."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module
