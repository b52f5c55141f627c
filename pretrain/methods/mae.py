"""Masked reconstruction: the encoder sees an image with regions blanked out, and an encoder +
U-Net decoder learns to paint them back.

Two masking schemes:

- `rectangles` (default, for CNNs): inpainting of several random rectangles of random size and
  position that together cover about `mask_ratio` of the image. A CNN's receptive field spans
  patch boundaries, so a fixed grid would be an odd fit; free rectangles are the context-encoder
  style of pretext task.
- `patches` (MAE / SimMIM): the image is cut into a grid of `patch_size` px squares and a random
  `mask_ratio` of them is masked. It works with any encoder, and is the scheme for ViTs (MAE
  masks 75% of 16 px patches, SimMIM 60% of 32 px ones).

The target is the image in the encoder's normalised space (SimMIM's choice: every channel has
unit scale, so no colour dominates the loss). Masked pixels of the input are set to 0 in that
space, i.e. to the dataset mean, and the loss (`l1` as SimMIM, or `l2` as MAE) counts the masked
pixels only: reconstructing visible pixels is copying, which teaches nothing.

The decoder is the monodepth2 U-Net on the plain encoder, with a 3-channel head: its body has
the layout segmentation transfer reuses (`--init encoder+decoder`), heads replaced.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from bench.core.seeding import flip_batch
from bench.core.models.unet_decoder import UNetDecoder
from pretrain.methods.base import MethodOptions, PretrainMethod, register_method

# Side lengths of one inpainting rectangle, as fractions of the image's height / width: large
# enough to need context from outside the hole, small enough that several make up the ratio.
RECT_SIDE = (0.1, 0.5)
# Candidate rectangles drawn per image; a candidate that would overshoot the ratio by more than
# RECT_TOLERANCE is dropped. All candidates are drawn up front, so the generator advances by the
# same amount whatever the outcome (resume replays identically).
RECT_DRAWS = 64
RECT_TOLERANCE = 0.05


def rectangle_mask(gen: torch.Generator, n: int, height: int, width: int, ratio: float) -> torch.Tensor:
    """N×H×W bool: per image, random rectangles covering between `ratio` and `ratio` +
    RECT_TOLERANCE of the pixels (less only if every candidate overshot, which is rare)."""
    lo, hi = RECT_SIDE
    draws = torch.rand(n, RECT_DRAWS, 4, generator=gen)
    masks = torch.zeros(n, height, width, dtype=torch.bool)
    total = height * width
    for i in range(n):
        mask, covered = masks[i], 0
        for fh, fw, fy, fx in draws[i].tolist():
            if covered >= ratio * total:
                break
            h = max(1, round((lo + (hi - lo) * fh) * height))
            w = max(1, round((lo + (hi - lo) * fw) * width))
            y, x = int(fy * (height - h + 1)), int(fx * (width - w + 1))
            gained = int((~mask[y:y + h, x:x + w]).sum())
            if covered + gained > (ratio + RECT_TOLERANCE) * total:
                continue
            mask[y:y + h, x:x + w] = True
            covered += gained
    return masks


def patch_mask(gen: torch.Generator, n: int, height: int, width: int, ratio: float, patch: int) -> torch.Tensor:
    """N×H×W bool: a grid of `patch` px squares anchored at the top-left corner (partial squares
    at the right and bottom edges), exactly round(ratio × squares) of them masked per image."""
    gh, gw = -(-height // patch), -(-width // patch)
    count = gh * gw
    k = round(ratio * count)
    order = torch.rand(n, count, generator=gen).argsort(dim=1)
    grid = torch.zeros(n, count, dtype=torch.bool)
    grid.scatter_(1, order[:, :k], True)
    grid = grid.view(n, gh, gw)
    full = grid.repeat_interleave(patch, dim=1).repeat_interleave(patch, dim=2)
    return full[:, :height, :width]


@register_method
class MaskedReconstruction(PretrainMethod):
    name = "mae"
    description = "masked reconstruction: an encoder + U-Net decoder paint masked rectangles (or MAE patches) back"
    kind = "image"

    class Options(MethodOptions):
        mask: Literal["rectangles", "patches"] = Field(
            "rectangles", description="rectangles: inpainting of random rectangles (CNNs); "
            "patches: MAE/SimMIM grid masking (any encoder; what ViTs use)")
        mask_ratio: float = Field(0.5, gt=0, lt=1, description="fraction of the image masked "
                                  "(MAE uses 0.75 with patches, SimMIM 0.6 with 32 px patches)")
        patch_size: int = Field(16, ge=1, description="patch side in px for mask=patches (16 as MAE, or 32 as SimMIM)")
        loss: Literal["l1", "l2"] = Field("l1", description="per-pixel loss on the masked pixels (l1: SimMIM, l2: MAE)")

    def __init__(self, config, source):
        super().__init__(config, source)
        self.decoder = UNetDecoder(self.encoder.channels, out_channels=3, scales=(0,))
        self.modules["decoder"] = self.decoder

    def draw_mask(self, gen: torch.Generator, n: int, height: int, width: int) -> torch.Tensor:
        o = self.options
        if o.mask == "patches":
            return patch_mask(gen, n, height, width, o.mask_ratio, o.patch_size)
        return rectangle_mask(gen, n, height, width, o.mask_ratio)

    def loss(self, gen, batch_size):
        batch = self.batches.draw(gen, batch_size)
        (images,) = flip_batch(gen, batch["image"])
        n, _, h, w = images.shape
        # N×1×H×W, True = hidden from the encoder (drawn on the CPU from the step's generator)
        mask = self.draw_mask(gen, n, h, w)[:, None].to(images.device)
        target = self.normalized(images)
        masked_input = target.masked_fill(mask, 0.0)  # 0 after normalisation = the dataset mean
        pred = self.decoder(self.encoder(masked_input), size=(h, w))[0]
        diff = pred - target
        err = diff.abs() if self.options.loss == "l1" else diff.square()
        weight = mask.to(err.dtype)
        hidden = weight.sum()
        terms = {"masked_fraction": weight.mean()}
        if hidden == 0:
            return None, terms
        loss = (err * weight).sum() / (hidden * err.shape[1])
        terms["reconstruction"] = loss.detach()
        return loss, terms

    def decoder_meta(self):
        return {"kind": "monodepth2", "out_channels": 3, "scales": [0], "activation": None,
                "output": "rgb, normalised with the encoder's normalization"}

    def extra_meta(self):
        o = self.options
        return {"mask": o.mask, "mask_ratio": o.mask_ratio}
