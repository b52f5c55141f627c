"""DeepLabV3: torchvision's ASPP head on a dilated encoder of output stride 8 or 16.

The encoder is built with timm's `output_stride`, which dilates the last stages instead of
striding them; its weights (and their names) are unchanged, so any checkpoint of the arch loads.
The atrous rates follow Chen et al. (2017): (6, 12, 18) at output stride 16, doubled at 8. The
head sees the deepest level only, as DeepLabV3 (not V3+) does; its logits are upsampled to the
image.

A depth checkpoint pre-trained with this head (`depth_supervised` with `decoder: deeplabv3`, Lao et
al.'s Cityscapes setting, their Table 5) is reused like the U-Net's: with `--init auto` or
`encoder+decoder` every tensor of the head but its last 1×1 convolution (`head.4`, the classifier)
loads from the checkpoint, BatchNorm statistics included. The body also loads across output
strides (the rates double, the weights keep their shapes: DeepLabV3's own train-at-16,
evaluate-at-8 practice). With any other checkpoint the head starts fresh: the
cross-architecture setting (Fig. 1c)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from bench.core.checkpoint import load_all_but
from transfer.decoders.base import DecoderOptions, SegmentationDecoder, register_decoder


@register_decoder
class DeepLabV3Decoder(SegmentationDecoder):
    name = "deeplabv3"
    description = ("torchvision's DeepLabV3 ASPP head on a dilated encoder (output stride 16 or 8), "
                   "reusable from depth checkpoints pre-trained with it")
    reuses = "deeplabv3"

    class Options(DecoderOptions):
        output_stride: Literal[8, 16] = Field(16, description="encoder output stride (8: finer, about 4x the compute)")

    @classmethod
    def encoder_kwargs(cls, options) -> dict:
        return {"output_stride": options.output_stride}

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options):
        super().__init__()
        rates = (6, 12, 18) if options.output_stride == 16 else (12, 24, 36)
        self.head = DeepLabHead(channels[-1], num_classes, atrous_rates=rates)

    def used_levels(self, num_levels: int) -> list[int]:
        return [num_levels - 1]

    def load_body(self, state: dict[str, torch.Tensor]) -> int:
        """Every saved tensor but the classifier's (`head.4.*`, which stays fresh); how many were
        loaded (0, loading nothing, when names or shapes differ from this head's)."""
        return load_all_but(self, state, f"head.{len(self.head) - 1}.")

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.head(features[-1]), size=size, mode="bilinear", align_corners=False)
