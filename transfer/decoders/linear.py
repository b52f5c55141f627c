"""The linear probe: BatchNorm + 1×1 convolution over the encoder's levels.

Levels at strides 4..32 (the stride-2 stem is skipped) are upsampled to stride 4 and
concatenated; the classifier's logits are upsampled to the image. This is DINOv2's multi-layer
linear evaluation for dense prediction; nothing but the BatchNorm and the 1×1 conv learns."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transfer.decoders.base import SegmentationDecoder, register_decoder


@register_decoder
class LinearHead(SegmentationDecoder):
    name = "linear"

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options):
        super().__init__()
        self.levels = [i for i, s in enumerate(strides) if s >= 4] or [len(channels) - 1]
        width = sum(channels[i] for i in self.levels)
        self.bn = nn.BatchNorm2d(width)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def used_levels(self, num_levels: int) -> list[int]:
        return list(self.levels)

    def prepare(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        # Resampling and concatenating have no weights: for a frozen encoder they run once per view
        # (cached), which is most of a linear probe's cost per step.
        base = features[self.levels[0]].shape[-2:]
        return [torch.cat([F.interpolate(features[i], size=base, mode="bilinear", align_corners=False)
                           if features[i].shape[-2:] != base else features[i] for i in self.levels], dim=1)]

    def forward(self, prepared: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.classifier(self.bn(prepared[0])), size=size, mode="bilinear",
                             align_corners=False)
