"""The linear probe: per level, BatchNorm + 1×1 convolution; the class scores are summed.

Every level at stride 4 or coarser (the stride-2 stem is skipped) gets its own BatchNorm and 1×1
classifier at its own resolution; the scores are upsampled (bilinear) to the image and added.
Because a 1×1 convolution commutes with bilinear resampling, this is one linear map of the
concatenated, upsampled levels -- DINOv2's multi-layer linear evaluation for dense prediction --
but it never materialises that C×(H/4)×(W/4) tensor, which made the probe cost more than a frozen
encoder. Only the BatchNorms and the 1×1 convs learn."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transfer.decoders.base import SegmentationDecoder, register_decoder


@register_decoder
class LinearHead(SegmentationDecoder):
    name = "linear"
    description = "linear probe: BatchNorm + 1x1 conv per level, scores summed"

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options):
        super().__init__()
        self.levels = [i for i, s in enumerate(strides) if s >= 4] or [len(channels) - 1]
        self.bns = nn.ModuleList(nn.BatchNorm2d(channels[i]) for i in self.levels)
        # One bias for the sum: the others would be redundant parameters.
        self.classifiers = nn.ModuleList(nn.Conv2d(channels[i], num_classes, 1, bias=(k == 0))
                                         for k, i in enumerate(self.levels))

    def used_levels(self, num_levels: int) -> list[int]:
        return list(self.levels)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        scores = None
        for bn, classifier, i in zip(self.bns, self.classifiers, self.levels):
            s = F.interpolate(classifier(bn(features[i])), size=size, mode="bilinear", align_corners=False)
            scores = s if scores is None else scores + s
        return scores
