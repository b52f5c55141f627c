"""Pinhole camera geometry for view synthesis: back-projection, projection, warping, poses.

Conventions (those of OpenCV, monodepth2 and the generated world):
- camera axes: x right, y down, z forward; depth is the z coordinate (not the ray length);
- pixel (row i, column j) has image coordinates (u, v) = (j, i): integer pixel centres;
- sampling grids are in grid_sample's [-1, 1] with align_corners=True, under which -1 and +1 are
  the centres of the first and last pixels: exactly the integer-centre convention above;
- a transform T (N×4×4) maps homogeneous points of one camera's coordinates into another's:
  `inverse_warp` takes T from the target camera to the source camera, p_source = T @ p_target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Points closer than this to the source camera's plane would project to huge or flipped pixel
# coordinates; clamping keeps the grid finite (such pixels sample the border anyway).
MIN_Z = 1e-3


def pixel_grid(height: int, width: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Homogeneous pixel coordinates 3×H×W: (u, v, 1) with u the column and v the row."""
    v, u = torch.meshgrid(torch.arange(height, dtype=dtype, device=device),
                          torch.arange(width, dtype=dtype, device=device), indexing="ij")
    return torch.stack([u, v, torch.ones_like(u)])


def to_grid(uv: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel coordinates N×H×W×2 (u, v) -> grid_sample coordinates (align_corners=True)."""
    scale = uv.new_tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)])
    return uv * scale - 1.0


def backproject(depth: torch.Tensor, inv_K: torch.Tensor) -> torch.Tensor:
    """Depth N×1×H×W and inverse intrinsics N×3×3 -> 3-D points N×3×H×W in camera coordinates."""
    n, _, h, w = depth.shape
    pix = pixel_grid(h, w, depth.dtype, depth.device).view(1, 3, h * w)
    rays = inv_K.to(depth.dtype) @ pix  # N×3×HW, each ray with z = 1
    return (rays * depth.view(n, 1, h * w)).view(n, 3, h, w)


def project(points: torch.Tensor, K: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Points N×3×H×W of one camera, moved by T (N×4×4) into another and projected with its K:
    the sampling grid N×H×W×2 in [-1, 1] (align_corners=True) at which each point lands."""
    n, _, h, w = points.shape
    flat = points.reshape(n, 3, h * w)
    moved = T[:, :3, :3].to(flat.dtype) @ flat + T[:, :3, 3:].to(flat.dtype)
    cam = K.to(flat.dtype) @ moved
    uv = cam[:, :2] / cam[:, 2:].clamp(min=MIN_Z)
    return to_grid(uv.permute(0, 2, 1).reshape(n, h, w, 2), h, w)


def inverse_warp(source: torch.Tensor, depth: torch.Tensor, T: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """The source image resampled into the target view: each target pixel is back-projected
    with its depth, moved by T (target camera -> source camera) and looked up in `source`
    (bilinear; outside the image the border colour, as monodepth2)."""
    grid = project(backproject(depth, torch.linalg.inv(K)), K, T)
    return F.grid_sample(source, grid.to(source.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def flow_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """`image` sampled at (u + flow_u, v + flow_v) for every pixel (u, v); flow N×2×H×W in pixels.
    With the forward flow of frame k, warping frame k+1 gives frame k where nothing is occluded."""
    n, _, h, w = flow.shape
    uv = pixel_grid(h, w, flow.dtype, flow.device)[:2].unsqueeze(0) + flow
    grid = to_grid(uv.permute(0, 2, 3, 1), h, w)
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def rotation_from_axisangle(axisangle: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: axis-angle vectors N×3 (direction = axis, norm = angle in radians)
    -> rotation matrices N×3×3."""
    angle = axisangle.norm(dim=1, keepdim=True)
    # The epsilon keeps the zero rotation (the pose net's starting point) differentiable.
    axis = axisangle / (angle + 1e-7)
    x, y, z = axis.unbind(1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=axisangle.dtype, device=axisangle.device).expand_as(skew)
    s, c = torch.sin(angle).view(-1, 1, 1), torch.cos(angle).view(-1, 1, 1)
    return eye + s * skew + (1 - c) * (skew @ skew)


def pose_from_axisangle(axisangle: torch.Tensor, translation: torch.Tensor, invert: bool = False) -> torch.Tensor:
    """4×4 transforms [R | t] from axis-angle N×3 and translation N×3; with invert, the inverse
    transform [R^T | -R^T t] (the pose net predicts a->b; the previous frame needs b->a)."""
    R = rotation_from_axisangle(axisangle)
    t = translation.unsqueeze(-1)
    if invert:
        R = R.transpose(1, 2)
        t = -R @ t
    T = torch.zeros(axisangle.shape[0], 4, 4, dtype=axisangle.dtype, device=axisangle.device)
    T[:, :3, :3] = R
    T[:, :3, 3:] = t
    T[:, 3, 3] = 1.0
    return T
