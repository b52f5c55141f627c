"""Supervised monocular depth: encoder + monodepth2-style U-Net with a sigmoid depth head.

Depth is y = max_depth * sigmoid(z). Following the NaN-divergence guidelines, the last layer is
initialised with N(0, head_init_std^2), std in [0.1, 1] (0.5 by default, the paper's best on a
driving dataset with eps = 1e-24), bias 0, and the loss is the biased, square-root-free SILog over
the measured pixels (depth > 0), so dense and sparse (LiDAR) ground truth train the same way. The
unsafe variants the paper analyses stay selectable so a user can reproduce the instability.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from bench.core.seeding import flip_batch
from bench.core.models.unet_decoder import UNetDecoder
from pretrain.losses import scale_invariant_log_loss
from pretrain.methods.base import MethodOptions, PretrainMethod, register_method


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

    def __init__(self, config, source):
        super().__init__(config, source)
        self.max_depth = float(self.options.max_depth or source.max_depth)
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
            valid &= torch.rand(depth.shape, generator=gen) < o.sparse_fraction
        pred = self.predict(images)
        loss = scale_invariant_log_loss(pred, depth, valid, lam=o.silog_lambda, eps=o.silog_eps,
                                        unbiased=o.silog_unbiased, sqrt=o.silog_sqrt)
        terms = {"valid_fraction": valid.float().mean()}
        if loss.requires_grad:  # (an empty mask gives a detached zero: the loop skips the step)
            terms["silog"] = loss.detach()
        return loss, terms

    def decoder_meta(self):
        return {"kind": "monodepth2", "out_channels": 1, "scales": [0], "activation": "sigmoid",
                "output": "depth", "max_depth": self.max_depth}
