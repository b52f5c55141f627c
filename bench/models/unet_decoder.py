"""Monodepth2-style U-Net decoder, shared by depth pre-training and segmentation transfer.

The body (up-convolutions and skip fusions) is the part a depth pre-training leaves useful; the
per-scale output convolutions (`heads`) are task-specific. Transfer with `--init encoder+decoder`
loads the body and replaces the heads, the practice of Lao et al.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DECODER_CHANNELS = (16, 32, 64, 128, 256)


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        # Reflection padding, as monodepth2, avoids border artefacts in dense predictions.
        super().__init__(nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3), nn.ELU(inplace=True))


class UNetDecoder(nn.Module):
    """Decodes five encoder levels (strides 2..32) into full-resolution outputs.

    `scales` selects which resolutions get an output head (0 = full, 3 = 1/8); `forward` returns a
    dict scale -> raw (pre-activation) logits of `out_channels` channels.
    """

    def __init__(self, encoder_channels: list[int], out_channels: int, scales=(0,)):
        super().__init__()
        if len(encoder_channels) != 5:
            raise ValueError(f"UNetDecoder needs 5 encoder levels, got {len(encoder_channels)}")
        self.encoder_channels = list(encoder_channels)
        self.out_channels = out_channels
        self.scales = tuple(scales)
        self.upconvs = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for i in range(4, -1, -1):
            cin = encoder_channels[-1] if i == 4 else DECODER_CHANNELS[i + 1]
            self.upconvs.append(ConvBlock(cin, DECODER_CHANNELS[i]))
            skip = encoder_channels[i - 1] if i > 0 else 0
            self.fuse.append(ConvBlock(DECODER_CHANNELS[i] + skip, DECODER_CHANNELS[i]))
        self.heads = nn.ModuleDict(
            {str(s): self._make_head(DECODER_CHANNELS[s], out_channels) for s in self.scales}
        )

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
        x = features[-1]
        outputs = {}
        for step, i in enumerate(range(4, -1, -1)):
            x = self.upconvs[step](x)
            if i > 0:
                skip = features[i - 1]
                x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
                x = torch.cat([x, skip], dim=1)
            else:
                # Level 0 has no skip: upsample to twice level 0's size (full input resolution).
                target = size or (x.shape[-2] * 2, x.shape[-1] * 2)
                x = F.interpolate(x, size=target, mode="nearest")
            x = self.fuse[step](x)
            if str(i) in self.heads:
                outputs[i] = self.heads[str(i)](x)
        return outputs
