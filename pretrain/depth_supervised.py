"""Supervised monocular depth: encoder + monodepth2-style U-Net with a sigmoid depth head.

Depth is y = max_depth * sigmoid(z). Following the NaN-divergence guidelines, the last layer is
initialised with N(0, head_init_std^2), std in [0.1, 1] (0.5 by default, the paper's best on a
driving dataset with eps = 1e-24), bias 0, and the loss is the biased, square-root-free SILog.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.models.backbones import create_encoder, normalize
from bench.models.unet_decoder import UNetDecoder
from bench.augment import flip_batch
from pretrain.data import load_depth_frames
from pretrain.losses import scale_invariant_log_loss


class DepthSupervised:
    method = "depth_supervised"

    def __init__(self, config: dict):
        self.config = config
        self.data = load_depth_frames(config["root"])
        self.max_depth = self.data["max_depth"]
        self.encoder = create_encoder(config["arch"])
        self.decoder = UNetDecoder(self.encoder.channels, out_channels=1, scales=(0,))
        head = self.decoder.head_conv(0)
        nn.init.normal_(head.weight, 0.0, float(config.get("head_init_std", 0.5)))
        nn.init.zeros_(head.bias)
        self.modules = {"encoder": self.encoder, "decoder": self.decoder}

    def predict(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = normalize(images_uint8.float() / 255.0, self.encoder.normalization)
        logits = self.decoder(self.encoder(x), size=x.shape[-2:])[0]
        return self.max_depth * torch.sigmoid(logits[:, 0])

    def loss(self, gen: torch.Generator, batch_size: int):
        n = self.data["images"].shape[0]
        idx = torch.randint(n, (batch_size,), generator=gen)
        images, depth = flip_batch(gen, self.data["images"][idx], self.data["depth"][idx])
        pred = self.predict(images)
        # Sky and anything at the range cap carry no depth signal, like LiDAR without a return.
        valid = (depth > 0) & (depth < self.max_depth)
        c = self.config
        loss = scale_invariant_log_loss(
            pred, depth, valid, lam=float(c.get("silog_lambda", 0.85)), eps=float(c.get("silog_eps", 1e-24)),
            unbiased=bool(c.get("silog_unbiased", False)), sqrt=bool(c.get("silog_sqrt", False)),
        )
        return loss, ({"silog": loss.detach()} if loss is not None else {})

    def decoder_meta(self) -> dict:
        return {"kind": "monodepth2", "out_channels": 1, "scales": [0], "activation": "sigmoid",
                "max_depth": self.max_depth}
