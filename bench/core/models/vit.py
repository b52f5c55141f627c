"""ViT encoders with multi-scale features, as Depth Anything (DPT) and DINOv2's dense heads take them.

A plain ViT has one token grid at its patch stride. Dense heads tap four intermediate blocks
instead of the last one and treat them as a pyramid:

- **Blocks.** Four blocks spread over the depth, the last one included: Depth Anything's
  `intermediate_layer_idx` where it defines one (12 blocks: 2, 5, 8, 11; 24: 4, 11, 17, 23;
  40: 9, 19, 29, 39), otherwise `round(depth * k / 4) - 1` for k = 1..4 (the 12- and 40-block
  choices exactly).
- **Norm.** Every tapped block goes through the ViT's final LayerNorm (`norm=True`), as Depth
  Anything's and DINOv2's `get_intermediate_layers(..., norm=True)` do. Raw residual streams grow
  by orders of magnitude with depth; normalised, the four levels are on one scale, which the
  parameter-free linear probe and the U-Net's skip concatenations need. It also keeps every
  tensor of the state dict in use (`norm.*` would otherwise be dead weight).
- **Tokens.** Class and register tokens are dropped; patch tokens become N×C×(H/p)×(W/p).
- **Padding.** Inputs whose size is not a multiple of the patch size are zero-padded at the
  bottom and right (timm `dynamic_img_pad=True`; zero is the mean colour after ImageNet
  normalisation), not resized: pixels keep their scale and positions, and the token grid
  covers the image from its top-left corner. Positional embeddings are interpolated to any
  grid (`dynamic_img_size=True`).
- **Resampling.** Each level is bilinearly sampled from its token grid at the centres of the
  stride-s cells of the (unpadded) image, for s = 4, 8, 16, 32 (capped at `output_stride`),
  giving ceil(H/s) × ceil(W/s) maps as a CNN's stride-s level has. The sampling positions come
  from the true patch-to-stride ratio p/s, not from the ratio of grid sizes, so the padding
  and a patch size like 14 that does not divide the strides add no spatial shift. For p = 16
  the stride-32 level is exactly 2×2 average pooling and the stride-16 level the tokens
  themselves. No parameters: any learnable reassembly (DPT's) belongs to the decoder, so the
  encoder's weights are exactly the pre-trained ones.
- **Tokens for heads that read them.** The returned list is a `ViTLevels`: besides the four
  levels it carries, per block of `token_blocks` (the tapped blocks and the last four), that
  block's normed patch-token grid as it is (N×C×gh×gw, not resampled, covering the padded
  image) and its class token (N×C; None for a ViT without one). Heads that take the tokens
  themselves, as DINOv2's linear probe does (`transfer.decoders.linear`), read them there;
  everything else sees a plain list of levels. The encoder's `strides` is a `TokenGridStrides`,
  a list of ints that also says the levels come from a token grid (`patch_size`, `depth`,
  `has_class_token`), so a head knows at construction that it will get tokens. Carrying them
  costs two more final-norm'd grids (blocks depth-3 and depth-2 for the default taps); the
  levels are computed exactly as before.

The encoder *is* the timm `VisionTransformer` (re-classed to `ViTEncoder`, which only adds
`forward`), so its `state_dict` keys are exactly those of
`timm.create_model(name, num_classes=0, dynamic_img_size=True)`: `cls_token`, `pos_embed`,
`blocks.0.attn.qkv.weight`, ..., with no `model.` prefix, and foreign weights load unchanged.
"""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import VisionTransformer

from bench.core.errors import UserError

LEVEL_STRIDES = (4, 8, 16, 32)
OUTPUT_STRIDES = (8, 16, 32)

# Depth Anything's `intermediate_layer_idx` (vits/vitb: 12 blocks, vitl: 24, vitg: 40).
_DEPTH_ANYTHING_BLOCKS = {12: (2, 5, 8, 11), 24: (4, 11, 17, 23), 40: (9, 19, 29, 39)}


def default_blocks(depth: int) -> tuple[int, ...]:
    """The four blocks tapped for a ViT of `depth` blocks (see the module docstring)."""
    if depth in _DEPTH_ANYTHING_BLOCKS:
        return _DEPTH_ANYTHING_BLOCKS[depth]
    if depth < 4:
        raise ValueError(f"a ViT with {depth} blocks cannot give four levels")
    return tuple(round(depth * k / 4) - 1 for k in range(1, 5))


def resample_tokens(grid: torch.Tensor, patch: tuple[int, int], stride: int,
                    image_size: tuple[int, int]) -> torch.Tensor:
    """A N×C×gh×gw token grid (token (i, j) centred at ((i + ½)·ph, (j + ½)·pw) in image pixels)
    sampled bilinearly at the centres of the stride-`stride` cells of an image of `image_size`:
    N×C×ceil(H/stride)×ceil(W/stride)."""
    out = (math.ceil(image_size[0] / stride), math.ceil(image_size[1] / stride))
    if tuple(patch) == (stride, stride) and tuple(grid.shape[-2:]) == out:
        return grid  # the tokens themselves (also exact under autocast and for any dtype)
    # The aten op takes the output size *and* the scale factors that place the samples;
    # F.interpolate accepts only one of the two and would stretch the padded grid over the image.
    return torch.ops.aten.upsample_bilinear2d(grid, list(out), False, patch[0] / stride, patch[1] / stride)


class TokenGridStrides(list):
    """The `strides` of a `ViTEncoder`'s levels: a list of ints like any encoder's, which also says
    that the levels are resampled from the token grid of a ViT with `depth` blocks and patches of
    `patch_size` (height, width) pixels (`has_class_token`: whether it has a class token), and
    that its output carries those tokens (`ViTLevels.tokens`)."""

    patch_size: tuple[int, int]
    depth: int
    has_class_token: bool


class ViTLevels(list):
    """What a `ViTEncoder` returns: the list of its four levels, and in `tokens` a block index ->
    (normed patch-token grid N×C×gh×gw, class token N×C or None) map for its `token_blocks`."""

    tokens: dict[int, tuple[torch.Tensor, torch.Tensor | None]]


class ViTEncoder(VisionTransformer):
    """A timm `VisionTransformer` whose `forward` returns four feature levels and the tokens of
    `token_blocks` (see the module docstring). Made by `vit_encoder`, never constructed directly."""

    arch: str
    blocks_tapped: tuple[int, ...]
    token_blocks: tuple[int, ...]
    channels: list[int]
    strides: TokenGridStrides
    normalization: dict

    def forward(self, x: torch.Tensor) -> ViTLevels:
        image_size = tuple(x.shape[-2:])
        blocks = self.token_blocks
        out = self.forward_intermediates(x, indices=list(blocks), norm=True, stop_early=True, output_fmt="NCHW",
                                         intermediates_only=True, return_prefix_tokens=True)
        grids, classes = {}, {}
        for b, o in zip(blocks, out):
            # (grid, prefix tokens) -- a plain grid for a ViT without prefix tokens. The class token
            # is copied out: a view would keep the block's whole normed token sequence alive.
            grids[b], prefix = o if isinstance(o, tuple) else (o, None)
            classes[b] = prefix[:, 0].clone() if prefix is not None and self.cls_token is not None else None
        patch = tuple(self.patch_embed.patch_size)
        levels = ViTLevels(resample_tokens(grids[b], patch, s, image_size)
                           for b, s in zip(self.blocks_tapped, self.strides))
        levels.tokens = {b: (grids[b], classes[b]) for b in blocks}
        return levels


def vit_encoder(timm_name: str, *, arch: str, mean, std, blocks: tuple[int, ...] | None = None,
                output_stride: int = 32, **timm_kwargs) -> ViTEncoder:
    """Build a randomly initialised timm ViT and turn it into a `ViTEncoder`.

    `output_stride` (8, 16 or 32) caps the levels' strides: 16 gives [4, 8, 16, 16]. The
    weights are the same for every output stride; only the resampling changes."""
    import timm

    if output_stride not in OUTPUT_STRIDES:
        raise UserError(f"{arch}: output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    kwargs = {"num_classes": 0, "dynamic_img_size": True, "dynamic_img_pad": True, **timm_kwargs}
    model = timm.create_model(timm_name, pretrained=False, **kwargs)
    if type(model) is not VisionTransformer:
        raise TypeError(f"{timm_name} builds a {type(model).__name__}, not a timm VisionTransformer")
    # Re-classing rather than wrapping keeps every module and tensor where timm put it: state-dict
    # keys, CKA hook names (`blocks.3`) and foreign checkpoints all stay plain timm.
    model.__class__ = ViTEncoder
    depth = len(model.blocks)
    tapped = tuple(blocks) if blocks is not None else default_blocks(depth)
    valid = len(tapped) == len(LEVEL_STRIDES) and list(tapped) == sorted(set(tapped))
    if not valid or not all(0 <= b < depth for b in tapped):
        raise ValueError(f"{arch}: blocks {tapped} must be four increasing indices below {depth}")
    model.arch = arch
    model.blocks_tapped = tapped
    # The last four blocks too: DINOv2's linear probe reads them (transfer/decoders/linear.py).
    model.token_blocks = tuple(sorted(set(tapped) | set(range(depth - 4, depth))))
    model.channels = [model.embed_dim] * len(LEVEL_STRIDES)
    model.strides = TokenGridStrides(min(s, output_stride) for s in LEVEL_STRIDES)
    model.strides.patch_size, model.strides.depth = tuple(model.patch_embed.patch_size), depth
    model.strides.has_class_token = model.cls_token is not None
    model.normalization = {"mean": list(mean), "std": list(std)}
    # timm's per-block list, narrowed to the levels this encoder returns.
    model.feature_info = [{"module": f"blocks.{b}", "num_chs": c, "reduction": s}
                          for b, c, s in zip(tapped, model.channels, model.strides)]
    return model
