"""Supervised monocular depth: encoder + a dense decoder with a sigmoid depth head.

The decoder is the monodepth2-style U-Net (`decoder: unet`, the default) or, as in Lao et al.'s
Cityscapes experiment (their Table 5: "we modify the prediction head of DeepLabV3 to train for
depth"), torchvision's DeepLabV3 head (`decoder: deeplabv3`): its ASPP head on the deepest level
of an encoder dilated to `output_stride` 16 (or 8), exactly the layout of the transfer decoder
`deeplabv3`, with one output channel whose logits are upsampled (bilinear) to the image. Either
decoder is kept in the checkpoint, and transfer reuses every tensor of it but the last layer.

Depth is y = max_depth * sigmoid(z). Following the NaN-divergence guidelines, the last layer is
initialised with N(0, head_init_std^2), std in [0.1, 1] (0.5 by default, the paper's best on a
driving dataset with eps = 1e-24), bias 0, and the loss is the biased, square-root-free SILog over
the measured pixels (depth > 0), so dense and sparse (LiDAR) ground truth train the same way. The
unsafe variants the paper analyses stay selectable so a user can reproduce the instability.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_serializer
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from bench.core.checkpoint import load_all_but
from bench.core.errors import UserError
from bench.core.models.backbones import create_encoder
from bench.core.models.unet_decoder import UNetDecoder
from bench.core.seeding import flip_batch
from pretrain.losses import scale_invariant_log_loss
from pretrain.methods.base import MethodOptions, PretrainMethod, register_method


def deeplab_rates(output_stride: int) -> tuple[int, int, int]:
    """Chen et al. (2017)'s atrous rates, as the transfer decoder `deeplabv3` sets them."""
    return (6, 12, 18) if output_stride == 16 else (12, 24, 36)


class DeepLabDepthDecoder(nn.Module):
    """torchvision's `DeepLabHead` on the deepest encoder level, one depth channel out. Its tensor
    names (`head.*`) and shapes are those of the transfer decoder `deeplabv3`; `head.4` (the last
    1×1 conv) is the task's output layer. `forward` returns {0: logits at `size`}, like
    `UNetDecoder`'s full-resolution output."""

    def __init__(self, in_channels: int, output_stride: int, out_channels: int = 1):
        super().__init__()
        self.output_stride = output_stride
        self.head = DeepLabHead(in_channels, out_channels, atrous_rates=deeplab_rates(output_stride))

    def head_conv(self, scale: int = 0) -> nn.Conv2d:
        return self.head[-1]

    def load_body(self, state: dict[str, torch.Tensor]) -> int:
        """Load every tensor but the output conv's; how many (0, loading nothing, on a mismatch)."""
        return load_all_but(self, state, f"head.{len(self.head) - 1}.")

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> dict[int, torch.Tensor]:
        return {0: F.interpolate(self.head(features[-1]), size=size, mode="bilinear", align_corners=False)}


@register_method
class DepthSupervised(PretrainMethod):
    name = "depth_supervised"
    description = "supervised monocular depth with a NaN-safe SILog loss"
    kind = "depth"

    class Options(MethodOptions):
        head_init_std: float = Field(0.5, gt=0, description="std of the depth head's last layer (NaN-safe: 0.1-1)")
        silog_lambda: float = Field(0.85, ge=0, le=1, description="lambda of the scale-invariant log loss")
        silog_eps: float = Field(1e-24, ge=0, description="eps in log(y + eps)")
        silog_unbiased: bool = Field(False, description="unbiased variance (unsafe; for study)")
        silog_sqrt: bool = Field(False, description="minimise sqrt of the loss (unsafe late in training; for study)")
        max_depth: float | None = Field(None, gt=0, description="depth range in metres (default: the dataset's)")
        sparse_fraction: float | None = Field(
            None, gt=0, le=1, description="keep only this random fraction of measured pixels per step "
            "(simulates LiDAR-like 5-20% supervision on dense ground truth)")
        decoder: Literal["unet", "deeplabv3"] = Field(
            "unet", description="the depth decoder: unet (monodepth2's U-Net) or deeplabv3 (torchvision's ASPP head "
            "on a dilated encoder, Lao et al.'s Cityscapes setting); kept for transfer")
        output_stride: Literal[8, 16] | None = Field(
            None, description="decoder=deeplabv3: the encoder's output stride (default 16), as the transfer "
            "decoder's option of that name")

        @field_validator("output_stride")
        @classmethod
        def _output_stride_needs_deeplab(cls, v, info):
            if v is not None and info.data.get("decoder") != "deeplabv3":
                raise ValueError("applies to decoder=deeplabv3 only")
            return v

        # The default decoder stays out of the resolved options (and the stride is spelled out for
        # DeepLabV3), so U-Net trainings keep the fingerprints they had before the choice existed.
        @model_serializer(mode="wrap")
        def _resolved(self, handler):
            out = handler(self)
            if out.get("decoder") == "unet":
                del out["decoder"]
                out.pop("output_stride", None)
            elif "decoder" in out and out.get("output_stride") is None:
                out["output_stride"] = 16
            return out

    def __init__(self, config, source):
        super().__init__(config, source)
        self.max_depth = float(self.options.max_depth or source.max_depth)
        if self.options.decoder == "deeplabv3":
            if int(config.get("batch_size") or 2) < 2:
                raise UserError("--method depth_supervised option decoder=deeplabv3 needs a batch size of at least 2 "
                                "(the ASPP image-pooling branch normalises one value per image)")
            stride = self.options.output_stride or 16
            # Dilated as the transfer decoder dilates it (same weights, so it loads anywhere).
            self.encoder = self.modules["encoder"] = create_encoder(config["arch"], output_stride=stride)
            self.decoder = DeepLabDepthDecoder(self.encoder.channels[-1], stride)
        else:
            self.decoder = UNetDecoder(self.encoder.channels, out_channels=1, scales=(0,))
        head = self.decoder.head_conv(0)
        nn.init.normal_(head.weight, 0.0, self.options.head_init_std)
        nn.init.zeros_(head.bias)
        self.modules["decoder"] = self.decoder

    def predict(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = self.normalized(images_uint8)
        logits = self.decoder(self.encoder(x), size=x.shape[-2:])[0]
        return self.max_depth * torch.sigmoid(logits[:, 0])

    def loss(self, gen, batch_size):
        batch = self.batches.draw(gen, batch_size)
        images, depth = flip_batch(gen, batch["image"], batch["depth"])
        valid = (depth > 0) & (depth <= self.max_depth)
        o = self.options
        if o.sparse_fraction is not None:
            valid &= (torch.rand(depth.shape, generator=gen) < o.sparse_fraction).to(valid.device)
        pred = self.predict(images)
        loss = scale_invariant_log_loss(pred, depth, valid, lam=o.silog_lambda, eps=o.silog_eps,
                                        unbiased=o.silog_unbiased, sqrt=o.silog_sqrt)
        terms = {"valid_fraction": valid.float().mean()}
        if loss.requires_grad:  # (an empty mask gives a detached zero: the loop skips the step)
            terms["silog"] = loss.detach()
        return loss, terms

    def decoder_meta(self):
        if isinstance(self.decoder, DeepLabDepthDecoder):
            return {"kind": "deeplabv3", "out_channels": 1, "output_stride": self.decoder.output_stride,
                    "atrous_rates": list(deeplab_rates(self.decoder.output_stride)), "activation": "sigmoid",
                    "output": "depth", "max_depth": self.max_depth}
        return {"kind": "monodepth2", "out_channels": 1, "scales": [0], "activation": "sigmoid",
                "output": "depth", "max_depth": self.max_depth}
