"""The linear probe, in two forms: per feature level (CNNs), or DINOv2's on a ViT's tokens.

**Per level** (`vit_tokens: levels`; the only form for CNNs and `entry:` encoders). Every level at
stride 4 or coarser (the stride-2 stem is skipped) gets its own BatchNorm and 1×1 classifier at
its own resolution; the coarser levels' scores are resampled (bilinear) to the finest read level's
grid (stride 4) and added there. Because a 1×1 convolution commutes with bilinear resampling,
this is mmseg's `resize_concat` (every level resized to the first one's grid, concatenated, one
1×1 convolution) -- DINOv2's multi-layer linear evaluation for dense prediction -- but it never
materialises that C×(H/4)×(W/4) tensor. (BatchNorm differs: here each level's statistics are taken
at its own resolution, mmseg's on the resized maps.)

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
over the image. docs/protocols.md lists the differences.

**The training loss** (`loss_at`). `image`: the grid's scores are upsampled (bilinear) to the
labels and scored per pixel, as mmseg and DINOv2 train -- the default of the token forms, so
their numbers stay comparable with published ones. `grid`: each grid cell's scores predict all of
its pixels, and the per-pixel cross-entropy is computed exactly on the grid from the cells' label
histograms (`transfer.decoders.grid_loss`) -- the default of the per-level form, the CNN probe of
this harness's comparisons: about 16× less work per step than the per-pixel loss, which is what
lets a K-candidate sweep cost little more than one candidate (benchmarks/sweep_cost.py), since a
frozen encoder's features are cached and the head is all that is left. Predictions (validation,
evaluation) are the bilinearly upsampled scores in both cases."""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_serializer
from torch import nn

from bench.core.errors import UserError
from bench.core.models.vit import TokenGridStrides, resample_tokens
from transfer.decoders.base import DecoderOptions, SegmentationDecoder, register_decoder
from transfer.decoders.grid_loss import grid_cross_entropy

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
        loss_at: Literal["image", "grid"] | None = Field(
            None, description="training loss on the bilinearly upsampled scores per pixel (image; the ViT token "
            "forms' default, as DINOv2) or exactly on the score grid from label histograms (grid; the per-level "
            "form's default, ~16x cheaper)")

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
            self.grid_stride = (strides[self.levels[0]],) * 2
            self.loss_at = options.loss_at or "grid"
            return
        if grid is None:
            raise UserError(f"decoder linear option vit_tokens={self.form}: reads a ViT's token grid, and this "
                            f"encoder is not a harness ViT; use vit_tokens=levels (or leave it unset)")
        self.class_token = bool(options.class_token)
        if self.class_token and not grid.has_class_token:
            raise UserError("decoder linear option class_token: this ViT has no class token")
        self.blocks = [grid.depth - 1] if self.form == "last" else list(range(grid.depth - 4, grid.depth))
        self.patch_size = self.grid_stride = tuple(grid.patch_size)
        self.loss_at = options.loss_at or "image"
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

    def parts(self) -> list[tuple[nn.BatchNorm2d, nn.Conv2d]]:
        """(BatchNorm, 1×1 classifier) per level read, finest first (one for the token forms)."""
        if self.form != "levels":
            return [(self.bn, self.classifier)]
        return list(zip(self.bns, self.classifiers))

    def parts_levels(self) -> list[int]:
        """The index, in `prepare`'s output, of each part's input."""
        return list(self.levels) if self.form == "levels" else [0]

    def grid_scores(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The class scores on the head's grid: the finest read level's, or the token grid; the
        coarser levels' scores are resampled (bilinear) to it and added."""
        scores = None
        for (bn, classifier), i in zip(self.parts(), self.parts_levels()):
            s = classifier(bn(features[i]))
            scores = s if scores is None else scores + resize_bilinear(s, scores.shape[-2:])
        return scores

    def place(self, scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Grid scores upsampled (bilinear) to `size`; a token grid by its patch geometry."""
        if self.form != "levels":
            p, grid = self.patch_size, scores.shape[-2:]
            if all(-(-s // q) == g for s, q, g in zip(size, p, grid)):  # `size` is the image the grid covers
                return resample_tokens(scores, p, 1, size)
        return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        return self.place(self.grid_scores(features), size)

    def loss(self, features: list[torch.Tensor], labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
        if self.loss_at == "image":
            return super().loss(features, labels, ignore_index)
        return grid_cross_entropy(self.grid_scores(features), labels, self.grid_stride, ignore_index)


def resize_bilinear(x: torch.Tensor, size) -> torch.Tensor:
    """`F.interpolate(x, size, mode="bilinear", align_corners=False)` as two matrix products with
    the interpolation's own weights: the same map (to float rounding), whose backward pass is a
    matrix product too -- several times faster on a CPU than the upsampling kernel's, which the
    linear probe's training step is mostly made of."""
    (h, w), (oh, ow) = x.shape[-2:], tuple(size)
    if (h, w) == (oh, ow):
        return x
    rows = _interpolation_matrix(h, oh, x.dtype, x.device)
    cols = _interpolation_matrix(w, ow, x.dtype, x.device)
    return rows @ (x @ cols.T)


@functools.lru_cache(maxsize=64)
def _interpolation_matrix(n_in: int, n_out: int, dtype, device) -> torch.Tensor:
    """n_out × n_in: 1-D linear interpolation (align_corners=False, edges clamped), read off the
    interpolation of the identity so that the weights are exactly torch's."""
    eye = torch.eye(n_in, dtype=torch.float64)[None]
    weights = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T
    return weights.to(dtype=dtype, device=device).contiguous()
