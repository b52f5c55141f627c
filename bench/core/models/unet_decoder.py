"""Monodepth2-style U-Net decoder, shared by depth pre-training and segmentation transfer.

The body (up-convolutions and skip fusions) is the part a depth pre-training leaves useful; the
per-scale output convolutions (`heads`) are task-specific. Transfer with `--init encoder+decoder`
loads the body and replaces the heads, the practice of Lao et al.

The body always has five stages, at strides 16, 8, 4, 2 and 1 of the input, each an up-convolution,
an upsampling and a fusion convolution. It takes the deepest encoder level (stride 32) as input
and the shallower levels as skips, deepest first: level -2 joins the stride-16 stage, level -3
the stride-8 stage, and so on. A ResNet's five levels (strides 2..32) thus fill every stage
but the last, exactly as in monodepth2 (and with the same tensor names and shapes as before the
decoder took other encoders); a ViT's four (strides 4..32) leave the stride-2 and stride-1 stages
without a skip. Encoders with 1 to 5 levels whose strides double up to 32 fit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DECODER_CHANNELS = (16, 32, 64, 128, 256)
STAGES = len(DECODER_CHANNELS)  # stage i works at 1/2**i of the input resolution


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        # Reflection padding, as monodepth2, avoids border artefacts in dense predictions.
        super().__init__(nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3), nn.ELU(inplace=True))


class UNetDecoder(nn.Module):
    """Decodes N encoder levels (1 <= N <= 5; strides 2**(6-N)..32, e.g. a ResNet's 2..32 or a
    ViT's 4..32) into full-resolution outputs.

    `scales` selects which resolutions get an output head (0 = full, 3 = 1/8); `forward` returns a
    dict scale -> raw (pre-activation) logits of `out_channels` channels.
    """

    def __init__(self, encoder_channels: list[int], out_channels: int, scales=(0,)):
        super().__init__()
        if not 1 <= len(encoder_channels) <= STAGES:
            raise ValueError(f"UNetDecoder needs 1 to {STAGES} encoder levels, got {len(encoder_channels)}")
        self.encoder_channels = list(encoder_channels)
        self.out_channels = out_channels
        self.scales = tuple(scales)
        self.upconvs = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for i in range(STAGES - 1, -1, -1):
            cin = encoder_channels[-1] if i == STAGES - 1 else DECODER_CHANNELS[i + 1]
            self.upconvs.append(ConvBlock(cin, DECODER_CHANNELS[i]))
            level = self._skip_level(i)
            skip = encoder_channels[level] if level is not None else 0
            self.fuse.append(ConvBlock(DECODER_CHANNELS[i] + skip, DECODER_CHANNELS[i]))
        self.heads = nn.ModuleDict(
            {str(s): self._make_head(DECODER_CHANNELS[s], out_channels) for s in self.scales}
        )

    def _skip_level(self, stage: int) -> int | None:
        """The encoder level fused at `stage` (stride 2**stage), or None.

        Counted from the deepest level, so five levels give `stage - 1` (monodepth2's layout)."""
        level = stage - 1 - (STAGES - len(self.encoder_channels))
        return level if stage > 0 and level >= 0 else None

    @staticmethod
    def _make_head(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3))

    def replace_heads(self, out_channels: int) -> None:
        """Fresh output layers for a new task; the body keeps its weights."""
        self.out_channels = out_channels
        self.heads = nn.ModuleDict(
            {str(s): self._make_head(DECODER_CHANNELS[s], out_channels) for s in self.scales}
        )

    def load_body(self, state: dict[str, torch.Tensor]) -> int:
        """Load a saved decoder's body (every tensor but the output heads) and return how many
        tensors that was; 0, loading nothing, when its names or shapes differ from this body's."""
        body = {k: v for k, v in state.items() if not k.startswith("heads.")}
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("heads.")}
        if set(body) != set(own) or any(own[k].shape != v.shape for k, v in body.items()):
            return 0
        self.load_state_dict(body, strict=False)  # heads stay as they are
        return len(body)

    def head_conv(self, scale: int = 0) -> nn.Conv2d:
        return self.heads[str(scale)][1]

    def forward(self, features: list[torch.Tensor], size: tuple[int, int] | None = None):
        if len(features) != len(self.encoder_channels):
            raise ValueError(f"UNetDecoder built for {len(self.encoder_channels)} levels, got {len(features)}")
        x = features[-1]
        outputs = {}
        for step, i in enumerate(range(STAGES - 1, -1, -1)):
            x = self.upconvs[step](x)
            level = self._skip_level(i)
            if level is not None:
                skip = features[level]
                x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
                x = torch.cat([x, skip], dim=1)
            else:
                # No skip here: upsample to this stage's share of the input size (stage 0: the full
                # input resolution; ceil, as strided convolutions and ViT levels round), or twice
                # the current size when the input size is not given.
                if size is not None:
                    target = (math.ceil(size[0] / 2**i), math.ceil(size[1] / 2**i))
                else:
                    target = (x.shape[-2] * 2, x.shape[-1] * 2)
                x = F.interpolate(x, size=target, mode="nearest")
            x = self.fuse[step](x)
            if str(i) in self.heads:
                outputs[i] = self.heads[str(i)](x)
        return outputs
