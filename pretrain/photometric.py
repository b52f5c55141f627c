"""Photometric losses of self-supervised depth and flow (monodepth2's definitions).

Images are float in [0, 1], N×C×H×W. The structural term is SSIM over 3×3 windows (average
pooling over reflection-padded inputs, so border pixels see a mirrored window instead of zeros);
the appearance error mixes it with L1 as `alpha * (1 - SSIM) / 2 + (1 - alpha) * L1`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

C1 = 0.01 ** 2
C2 = 0.03 ** 2


def _local_mean(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel_size=3, stride=1)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM map (N×C×H×W) of two images in [0, 1]; 1 where the windows are identical."""
    mu_x, mu_y = _local_mean(x), _local_mean(y)
    # Population (biased) local variances and covariance: E[x^2] - E[x]^2 over the window.
    sigma_x = _local_mean(x * x) - mu_x * mu_x
    sigma_y = _local_mean(y * y) - mu_y * mu_y
    sigma_xy = _local_mean(x * y) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + C1) * (2 * sigma_xy + C2)
    denominator = (mu_x * mu_x + mu_y * mu_y + C1) * (sigma_x + sigma_y + C2)
    return numerator / denominator


def photometric_error(pred: torch.Tensor, target: torch.Tensor, alpha: float = 0.85) -> torch.Tensor:
    """Per-pixel appearance error N×1×H×W: alpha * dissimilarity + (1 - alpha) * L1, each
    averaged over the colour channels."""
    l1 = (pred - target).abs().mean(1, keepdim=True)
    if alpha == 0:
        return l1
    dssim = torch.clamp((1 - ssim(pred, target)) / 2, 0, 1).mean(1, keepdim=True)
    return alpha * dssim + (1 - alpha) * l1


def edge_aware_smoothness(disp: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Mean first-order gradient of `disp` (any channel count, e.g. 2 for flow), down-weighted
    by exp(-|image gradient|) so that depth or flow may jump where the image has an edge.
    `image` must have disp's spatial size; callers resize it (monodepth2 mean-normalises disp
    first, which the caller does when it wants that)."""
    grad_disp_x = (disp[..., :, :-1] - disp[..., :, 1:]).abs()
    grad_disp_y = (disp[..., :-1, :] - disp[..., 1:, :]).abs()
    grad_img_x = (image[..., :, :-1] - image[..., :, 1:]).abs().mean(1, keepdim=True)
    grad_img_y = (image[..., :-1, :] - image[..., 1:, :]).abs().mean(1, keepdim=True)
    return (grad_disp_x * torch.exp(-grad_img_x)).mean() + (grad_disp_y * torch.exp(-grad_img_y)).mean()
