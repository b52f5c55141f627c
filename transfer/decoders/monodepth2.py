"""The U-Net decoder of the depth network, its last layer a classifier (Lao et al.'s setup).

With `--init encoder+decoder` the body comes from the depth checkpoint and only the output
convolution is fresh: the paper's best practice (Fig. 1b). The module *is* the pre-training's
`UNetDecoder`, so its tensor names are the checkpoint's `decoder.*` names."""

from __future__ import annotations

import torch

from bench.core.models.unet_decoder import UNetDecoder
from transfer.decoders.base import SegmentationDecoder, register_decoder


@register_decoder
class Monodepth2Decoder(SegmentationDecoder, UNetDecoder):
    name = "monodepth2"
    description = "the depth network's U-Net decoder (monodepth2 layout), reusable from depth checkpoints"
    reuses = "monodepth2"

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options):
        # Finest scale only: the paper segments from the full-resolution output.
        UNetDecoder.__init__(self, channels, out_channels=num_classes, scales=(0,))

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        return UNetDecoder.forward(self, features, size=size)[0]

    load_body = UNetDecoder.load_body
