"""Unsupervised optical flow: a siamese encoder, a U-Net flow decoder, a photometric warping loss.

The centre frame and the next one of each video item go through the SAME encoder (one batch,
shared weights); the two feature maps of each level are concatenated along channels and decoded
by a U-Net (`UNetDecoder` built for the doubled channel counts) with 2-channel heads at scales
0-3. The forward flow is learned without labels: the next frame, backward-warped by the flow
(`flow_warp`: sampled at (x + u, y + v)), must reproduce the centre frame under the photometric
error of self-supervised depth (0.85 SSIM + 0.15 L1), plus an edge-aware first-order smoothness
prior so textureless regions get the flow of their surroundings.

Units, at every scale s: the head's raw output times `flow_scale` is the flow in pixels of that
scale's own resolution. For the photometric loss it is upsampled (bilinear) to full resolution
and multiplied by the upsampling factor, so every scale is judged on full-resolution frames (as
monodepth2 does for depth); the smoothness is taken at the scale's own resolution against the
frame resized to it, weighted 1/2^s (monodepth2's weighting), so a coarse flow is not pushed
towards piecewise constancy harder than a fine one.

The smoothness weight (default 0.05) is for a flow in pixels: away from image edges the flow
of a driving scene changes by about 0.1 px per px or less, so the prior costs at most ~0.005,
a few percent of a typical photometric error (0.1-0.25 at the start); enough to fill textureless
regions from their surroundings without flattening real motion; the edge-aware weighting
relaxes it further at image edges, where flow may jump.

The output heads start at zero: training begins at zero flow (the identity warp), the right
prior for video, where most pixels move little, and no random initial flow pulls samples out of
the frame, where the border padding gives no gradient.

The decoder's input layout (two frames' features) differs from a segmentation decoder's, so the
checkpoint's decoder is of kind "flow": transfer never reuses it (`init auto` falls back to the
encoder alone).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.core.seeding import flip_batch
from bench.core.models.unet_decoder import UNetDecoder
from pretrain.geometry import flow_warp
from pretrain.methods.base import MethodOptions, PretrainMethod, register_method
from pretrain.photometric import edge_aware_smoothness, photometric_error

SCALES = (0, 1, 2, 3)


@register_method
class Flow(PretrainMethod):
    name = "flow"
    description = "unsupervised optical flow with a siamese encoder (photometric + smoothness losses)"
    kind = "video"

    class Options(MethodOptions):
        flow_scale: float = Field(1.0, gt=0, description="flow in pixels (of each scale's resolution) per unit "
                                                         "of the decoder's raw output")
        smoothness: float = Field(0.05, ge=0, description="weight of the edge-aware first-order flow smoothness "
                                                          "(flow in pixels; photometric errors are ~0.1)")
        alpha: float = Field(0.85, ge=0, le=1, description="SSIM weight of the photometric error (rest: L1)")

    def __init__(self, config, source):
        super().__init__(config, source)
        self.decoder = UNetDecoder([2 * c for c in self.encoder.channels], out_channels=2, scales=SCALES)
        for s in SCALES:
            head = self.decoder.head_conv(s)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.modules["decoder"] = self.decoder

    def predict(self, first_uint8: torch.Tensor, second_uint8: torch.Tensor) -> dict[int, torch.Tensor]:
        """Flow from the first frame to the second at each scale, N×2×h_s×w_s in pixels of that
        scale's resolution."""
        n = first_uint8.shape[0]
        features = self.encoder(self.normalized(torch.cat([first_uint8, second_uint8])))  # shared weights
        paired = [torch.cat([f[:n], f[n:]], dim=1) for f in features]
        raw = self.decoder(paired, size=first_uint8.shape[-2:])
        return {s: self.options.flow_scale * raw[s] for s in SCALES}

    @staticmethod
    def to_full_resolution(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """A flow in pixels of its own resolution, upsampled to `size` and rescaled to its pixels."""
        h, w = flow.shape[-2:]
        if (h, w) == tuple(size):
            return flow
        up = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
        return up * up.new_tensor([size[1] / w, size[0] / h]).view(1, 2, 1, 1)

    def loss(self, gen, batch_size):
        batch = self.batches.draw(gen, batch_size)
        # Flipping both frames together keeps them a valid pair (the flow's u flips with them).
        first, second = flip_batch(gen, batch["frames"][:, 1], batch["frames"][:, 2])
        flows = self.predict(first, second)
        target, source = first.float() / 255.0, second.float() / 255.0
        size = target.shape[-2:]
        photometric, smoothness = 0.0, 0.0
        for s, flow in flows.items():
            warped = flow_warp(source, self.to_full_resolution(flow, size))
            photometric = photometric + photometric_error(warped, target, self.options.alpha).mean()
            image = target if s == 0 else F.interpolate(target, size=flow.shape[-2:], mode="bilinear",
                                                        align_corners=False, antialias=True)
            smoothness = smoothness + edge_aware_smoothness(flow, image) / 2 ** s
        photometric, smoothness = photometric / len(flows), smoothness / len(flows)
        loss = photometric + self.options.smoothness * smoothness
        return loss, {"photometric": photometric.detach(), "smoothness": smoothness.detach()}

    def decoder_meta(self):
        return {"kind": "flow", "out_channels": 2, "scales": list(SCALES),
                "input": "both frames' features concatenated per level (siamese encoder)",
                "output": "forward flow in pixels of each scale", "flow_scale": self.options.flow_scale}
