"""monodepth2's DepthDecoder state dict -> the harness `UNetDecoder` naming.

monodepth2 builds its decoder as an OrderedDict of blocks and saves them through
`nn.ModuleList(list(convs.values()))`, so a saved `depth.pth` names blocks by position:

    index 2*t      upconv(i, 0)  ConvBlock -> decoder.{2t}.conv.conv.{weight,bias}     (i = 4 - t)
    index 2*t + 1  upconv(i, 1)  ConvBlock -> decoder.{2t+1}.conv.conv.{weight,bias}
    index 10 + j   dispconv(s)   Conv3x3   -> decoder.{10+j}.conv.{weight,bias}         (j-th scale)

(a ConvBlock is Conv3x3 + ELU, a Conv3x3 is a reflection pad + `conv`). The harness decoder walks
the same levels in the same order: `upconvs.{t}` is upconv(4 - t, 0), `fuse.{t}` is
upconv(4 - t, 1), and `heads.{s}` is dispconv(s); each keeps its conv at index 1 of a Sequential
(pad, conv[, ELU]). A dispconv's scale is read from its input width (16 * 2**s channels, the
num_ch_dec of monodepth2), so any subset of scales maps correctly.

NimbleD's `MonoDepthDecoderReLU` and DepthToSemantic's copy of monodepth2 save the same layout.
"""

from __future__ import annotations

import re

import torch

_BLOCK = re.compile(r"^decoder\.(\d+)\.conv\.(conv\.)?(weight|bias)$")
LEVELS = 5  # ConvBlock pairs: levels 4..0
NUM_CH_DEC = (16, 32, 64, 128, 256)  # monodepth2's decoder widths per level (the harness uses the same)


def decoder_prefix(keys) -> str | None:
    """The prefix under which a monodepth2 DepthDecoder's tensors sit ('' for depth.pth itself)."""
    for k in keys:
        if k.endswith("decoder.0.conv.conv.weight"):
            return k[: -len("decoder.0.conv.conv.weight")]
    return None


def convert_depth_decoder(state: dict[str, torch.Tensor], prefix: str = "") -> tuple[dict, list[int], list[str]]:
    """(harness decoder state, output scales, names used) of the DepthDecoder under `prefix`.

    Raises ValueError naming what does not fit monodepth2's layout."""
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    used: list[str] = []
    for name, tensor in state.items():
        if not name.startswith(prefix + "decoder."):
            continue
        m = _BLOCK.match(name[len(prefix):])
        if m is None:
            raise ValueError(f"{name} is not a monodepth2 DepthDecoder tensor")
        index, nested, kind = int(m.group(1)), bool(m.group(2)), m.group(3)
        is_block = index < 2 * LEVELS
        if nested != is_block:
            raise ValueError(f"{name}: block {index} should be a {'ConvBlock' if is_block else 'Conv3x3'}")
        blocks.setdefault(index, {})[kind] = tensor
        used.append(name)
    out: dict[str, torch.Tensor] = {}
    for index in range(2 * LEVELS):
        block = blocks.get(index, {})
        if set(block) != {"weight", "bias"}:
            raise ValueError(f"upconv block {index} lacks its weight or bias")
        step, second = divmod(index, 2)
        for kind, tensor in block.items():
            out[f"{'fuse' if second else 'upconvs'}.{step}.1.{kind}"] = tensor
    heads = sorted(i for i in blocks if i >= 2 * LEVELS)
    if heads != list(range(2 * LEVELS, 2 * LEVELS + len(heads))):
        raise ValueError(f"dispconv blocks are not numbered from {2 * LEVELS} without gaps: {heads}")
    scales = []
    for index in heads:
        block = blocks[index]
        if set(block) != {"weight", "bias"} or block["weight"].dim() != 4:
            raise ValueError(f"dispconv block {index} lacks its weight or bias")
        width = block["weight"].shape[1]
        if width not in NUM_CH_DEC[:4]:
            raise ValueError(f"dispconv block {index} reads {width} channels, no monodepth2 scale does")
        scale = NUM_CH_DEC.index(width)
        if scale in scales:
            raise ValueError(f"two dispconv blocks for scale {scale}")
        scales.append(scale)
        for kind, tensor in block.items():
            out[f"heads.{scale}.1.{kind}"] = tensor
    return out, sorted(scales), used
