"""The linear probe, in two forms: per feature level (CNNs), or DINOv2's on a ViT's tokens.

**Per level** (`vit_tokens: levels`; the only form for CNNs and `entry:` encoders). Every level at
stride 4 or coarser (the stride-2 stem is skipped) gets its own BatchNorm and 1×1 classifier at
its own resolution; the scores are upsampled (bilinear) to the image and added. Because a 1×1
convolution commutes with bilinear resampling, this is one linear map of the concatenated,
upsampled levels -- DINOv2's multi-layer linear evaluation for dense prediction -- but it never
materialises that C×(H/4)×(W/4) tensor, which made the probe cost more than a frozen encoder.

**On the tokens** (`vit_tokens: last | last4`; `last` is the default for the harness's ViTs), as
DINOv2 evaluates segmentation (its `BNHead`, `input_transform="resize_concat"`): the final-norm'd
patch tokens of the last block ("lin.") or of the last four blocks concatenated along channels
(the feature part of its "+ms"), on the token grid itself (not the resampled levels), then one
BatchNorm over all channels, one 1×1 convolution (N(0, 0.01²) weights, zero bias, mmseg's
`conv_seg` initialisation) and a bilinear upsampling of the scores to the image. `class_token:
true` also concatenates each block's class token to every patch's features (channels ordered
patch, class per block, as DINOv2's depth probe orders them); DINOv2's released segmentation
heads do not (their backbone returns no class token), its linear depth probes do. The
concatenation happens in `prepare` (parameter-free; what the feature cache stores), so only the
BatchNorm and the convolution learn. The scores are placed on the image by the patch geometry
(`bench.core.models.vit.resample_tokens` at stride 1): where the image is a multiple of the patch
size this is exactly DINOv2's bilinear resize; otherwise the harness pads bottom/right and the
upsampling puts every token at its own pixels, where DINOv2 centre-pads and stretches the grid
over the image. docs/protocols.md lists the differences."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_serializer
from torch import nn

from bench.core.errors import UserError
from bench.core.models.vit import TokenGridStrides, resample_tokens
from transfer.decoders.base import DecoderOptions, SegmentationDecoder, register_decoder

TOKEN_FORMS = ("last", "last4")


@register_decoder
class LinearHead(SegmentationDecoder):
    name = "linear"
    description = ("linear probe: ViTs, DINOv2's BatchNorm + 1x1 conv on the last block's tokens; "
                   "CNNs, BatchNorm + 1x1 conv per level, scores summed")

    class Options(DecoderOptions):
        vit_tokens: Literal["last", "last4", "levels"] | None = Field(
            None, description="ViT encoders: last (the last block's patch tokens, DINOv2's lin.; the default), "
            "last4 (the last four blocks' concatenated) or levels (per level, as for CNNs)")
        class_token: bool | None = Field(
            None, description="with vit_tokens last/last4: concatenate the block's class token to every "
            "patch (DINOv2's depth probe); default false")

        @field_validator("class_token")
        @classmethod
        def _class_token_needs_tokens(cls, v, info):
            if v and info.data.get("vit_tokens") == "levels":
                raise ValueError("needs vit_tokens last or last4")
            return v

        # Unset options stay out of the resolved config, so the cells of every encoder that
        # leaves them unset keep the fingerprints they had before these options existed.
        @model_serializer(mode="wrap")
        def _without_unset(self, handler):
            return {k: v for k, v in handler(self).items() if v is not None}

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options):
        super().__init__()
        grid = strides if isinstance(strides, TokenGridStrides) else None
        self.form = options.vit_tokens or ("last" if grid is not None else "levels")
        if self.form == "levels":
            if options.class_token:
                raise UserError("decoder linear option class_token: needs vit_tokens last or last4")
            self.levels = [i for i, s in enumerate(strides) if s >= 4] or [len(channels) - 1]
            self.bns = nn.ModuleList(nn.BatchNorm2d(channels[i]) for i in self.levels)
            # One bias for the sum: the others would be redundant parameters.
            self.classifiers = nn.ModuleList(nn.Conv2d(channels[i], num_classes, 1, bias=(k == 0))
                                             for k, i in enumerate(self.levels))
            return
        if grid is None:
            raise UserError(f"decoder linear option vit_tokens={self.form}: reads a ViT's token grid, and this "
                            f"encoder is not a harness ViT; use vit_tokens=levels (or leave it unset)")
        self.class_token = bool(options.class_token)
        if self.class_token and not grid.has_class_token:
            raise UserError("decoder linear option class_token: this ViT has no class token")
        self.blocks = [grid.depth - 1] if self.form == "last" else list(range(grid.depth - 4, grid.depth))
        self.patch_size = tuple(grid.patch_size)
        self.levels = []
        width = channels[-1] * len(self.blocks) * (2 if self.class_token else 1)
        self.bn = nn.BatchNorm2d(width)
        self.classifier = nn.Conv2d(width, num_classes, 1)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def used_levels(self, num_levels: int) -> list[int]:
        return list(self.levels)

    def prepare(self, features: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Per level: the levels read. On the tokens: one N×C'×gh×gw tensor, the blocks' patch
        tokens (and class tokens, repeated over the grid) concatenated along channels."""
        if self.form == "levels":
            return super().prepare(features)
        tokens = getattr(features, "tokens", None)
        if tokens is None or any(b not in tokens for b in self.blocks):
            raise RuntimeError(f"the linear probe reads the tokens of blocks {self.blocks}, which the encoder's "
                               f"output does not carry (a bench.core.models.vit.ViTLevels does)")
        parts = []
        for b in self.blocks:
            grid, cls = tokens[b]
            parts.append(grid)
            if self.class_token:
                parts.append(cls[:, :, None, None].expand_as(grid))
        return [torch.cat(parts, dim=1)]

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        if self.form != "levels":
            scores = self.classifier(self.bn(features[0]))
            p, grid = self.patch_size, scores.shape[-2:]
            if all(-(-s // q) == g for s, q, g in zip(size, p, grid)):  # `size` is the image the grid covers
                return resample_tokens(scores, p, 1, size)
            return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)  # e.g. labels' own size
        scores = None
        for bn, classifier, i in zip(self.bns, self.classifiers, self.levels):
            s = F.interpolate(classifier(bn(features[i])), size=size, mode="bilinear", align_corners=False)
            scores = s if scores is None else scores + s
        return scores
