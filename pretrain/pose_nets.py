"""Auxiliary networks of self-supervised depth: the pose network and the learned-intrinsics head.

Neither is kept in the checkpoint (transfer only needs the depth encoder and decoder); the
methods put them in `modules` so that resume snapshots hold them.

- `PoseNet` (monodepth2): two frames stacked on the channel axis (6 channels) through a strided
  encoder, then a small convolutional decoder to one 6-DoF motion per pair (axis-angle and
  translation, scaled by 0.01 so the first steps warp almost by the identity). Its encoder starts
  from random weights, or (`load_encoder_from`) from a 3-channel encoder of the same arch the way
  monodepth2 starts its pose encoder from ImageNet weights: every tensor copied, the first
  convolution's weights repeated for the two frames and halved, so that two equal frames give
  the 3-channel network's response.
- `IntrinsicsHead` ("Depth from videos in the wild", NimbleD): for videos without calibration,
  focal lengths softplus(.) x image size and principal point sigmoid(.) x image size, predicted
  from the pose encoder's bottleneck.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.core.errors import UserError
from bench.core.models.backbones import backbone_spec, list_backbones

# Monodepth2 feeds the pose net (x - 0.45) / 0.225 rather than per-channel ImageNet statistics.
POSE_MEAN, POSE_STD = 0.45, 0.225


def disp_to_depth(disp: torch.Tensor, min_depth: float, max_depth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid output in [0, 1] -> (scaled disparity in [1/max, 1/min], depth in [min, max])."""
    min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
    scaled = min_disp + (max_disp - min_disp) * disp
    return scaled, 1.0 / scaled


class PoseNet(nn.Module):
    """Relative camera motion of a frame pair: forward(a, b) gives (axisangle N×3, translation
    N×3, bottleneck N×C×h×w), the motion that takes points from a's camera into b's."""

    def __init__(self, arch: str = "resnet18"):
        super().__init__()
        import timm

        # A harness backbone name (resnet18 as monodepth2, resnet10t for quick runs), rebuilt with
        # a 6-channel stem and random weights (see load_encoder_from).
        if arch not in list_backbones():
            raise UserError(f"option pose_arch={arch!r} is not a registered backbone; use one of: "
                            f"{', '.join(list_backbones())}")
        spec = backbone_spec(arch)
        if spec.family != "cnn":  # a ViT's fixed-size patch embedding is no 6-channel pose CNN
            cnns = [n for n in list_backbones() if backbone_spec(n).family == "cnn"]
            raise UserError(f"option pose_arch={arch!r}: the pose network needs a CNN backbone; use one of: "
                            f"{', '.join(cnns)}")
        try:
            self.encoder = timm.create_model(spec.timm_name, pretrained=False, features_only=True, in_chans=6)
        except Exception as exc:  # e.g. an architecture timm cannot build with 6 input channels
            raise UserError(f"option pose_arch={arch!r}: cannot build a 6-channel pose encoder ({exc})") from None
        self.channels = self.encoder.feature_info.channels()[-1]
        self.squeeze = nn.Conv2d(self.channels, 256, 1)
        self.decoder = nn.Sequential(
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(inplace=True), nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(inplace=True), nn.Conv2d(256, 6, 1),
        )

    @torch.no_grad()
    def load_encoder_from(self, encoder: nn.Module, what: str) -> None:
        """Copy a 3-channel encoder's weights (and BatchNorm statistics) of the same arch into the
        6-channel pose encoder; the input convolution's weights become cat([w, w], 1) / 2."""
        own, given = self.encoder.state_dict(), encoder.state_dict()
        if set(own) != set(given):
            diff = sorted(set(own) ^ set(given))[:3]
            raise UserError(f"{what}: the pose encoder's tensors differ from the encoder's (e.g. {', '.join(diff)})")
        state = {}
        for key, mine in own.items():
            theirs = given[key].detach().to(mine.dtype)
            if theirs.shape == mine.shape:
                state[key] = theirs.clone()
            elif (mine.dim() == 4 and theirs.dim() == 4 and mine.shape[1] == 2 * theirs.shape[1]
                  and mine.shape[0] == theirs.shape[0] and mine.shape[2:] == theirs.shape[2:]):
                state[key] = torch.cat([theirs, theirs], dim=1) / 2  # one copy per frame (monodepth2)
            else:
                raise UserError(f"{what}: tensor {key} is {tuple(theirs.shape)} in the encoder but "
                                f"{tuple(mine.shape)} in the pose encoder")
        self.encoder.load_state_dict(state)

    def forward(self, a: torch.Tensor, b: torch.Tensor):
        """a, b: float images in [0, 1], N×3×H×W."""
        x = (torch.cat([a, b], dim=1) - POSE_MEAN) / POSE_STD
        bottleneck = self.encoder(x)[-1]
        motion = 0.01 * self.decoder(F.relu(self.squeeze(bottleneck))).mean(dim=(2, 3))
        return motion[:, :3], motion[:, 3:], bottleneck


class IntrinsicsHead(nn.Module):
    """Pinhole intrinsics from the pose bottleneck: K N×3×3 for an image of size (H, W).

    The last layer starts near zero, so training starts from fx = softplus(0) W = 0.69 W,
    fy = 0.69 H and the image centre, the same for every image, and moves away as the
    photometric loss asks. `normalized` keeps a running average of (fx/W, fy/H, cx/W, cy/H) over
    training, which the checkpoint metadata records."""

    def __init__(self, in_channels: int, momentum: float = 0.9):
        super().__init__()
        self.fc = nn.Linear(in_channels, 4)
        nn.init.normal_(self.fc.weight, 0.0, 1e-3)
        nn.init.zeros_(self.fc.bias)
        self.momentum = momentum
        self.register_buffer("normalized", torch.zeros(4))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, bottleneck: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        raw = self.fc(bottleneck.mean(dim=(2, 3)))
        scale = raw.new_tensor([w, h])
        focal = F.softplus(raw[:, :2]) * scale
        centre = torch.sigmoid(raw[:, 2:]) * scale
        K = torch.zeros(raw.shape[0], 3, 3, dtype=raw.dtype, device=raw.device)
        K[:, 0, 0], K[:, 1, 1] = focal[:, 0], focal[:, 1]
        K[:, 0, 2], K[:, 1, 2] = centre[:, 0], centre[:, 1]
        K[:, 2, 2] = 1.0
        return K

    @torch.no_grad()
    def track(self, K: torch.Tensor, size: tuple[int, int]) -> None:
        """Fold a batch of predictions into the running average (first batch: taken as is)."""
        h, w = size
        batch = torch.stack([K[:, 0, 0] / w, K[:, 1, 1] / h, K[:, 0, 2] / w, K[:, 1, 2] / h], 1).mean(0)
        m = self.momentum if int(self.updates) > 0 else 0.0
        self.normalized.mul_(m).add_((1 - m) * batch.to(self.normalized.dtype))
        self.updates += 1
