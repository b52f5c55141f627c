"""Grad-CAM for semantic segmentation (Selvaraju et al. 2017, as Lao et al. use it in their Fig. 6).

For classification Grad-CAM differentiates one class score. For segmentation the target is the
sum, over pixels, of each pixel's predicted-class score:

    S = sum_p y_{c*(p)}(p),    c*(p) = argmax_c y_c(p)

(the argmax is a constant of the backward pass). With A the N x C x h x w activations of the chosen
layer, the channel weights are the spatially averaged gradients and the map their weighted sum,
rectified:

    w_c = mean_{i,j} dS/dA_c(i, j),    CAM = ReLU(sum_c w_c A_c)

Images are independent in evaluation mode (BatchNorm uses its running statistics), so one
backward of S summed over a batch gives every image its own gradients. `normalise_cams` upsamples
the maps (bilinear) to the image size and scales each to [0, 1] by its maximum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def segmentation_target(scores: torch.Tensor) -> torch.Tensor:
    """S: the sum over the batch and pixels of each pixel's predicted-class score (N x K x H x W)."""
    predicted = scores.detach().max(1, keepdim=True).indices
    return scores.gather(1, predicted).sum()


def grad_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """N x h x w maps from N x C x h x w activations and the target's gradients w.r.t. them."""
    if activations.shape != gradients.shape or activations.dim() != 4:
        raise ValueError(f"activations {tuple(activations.shape)} and gradients {tuple(gradients.shape)} must be "
                         f"equal N x C x h x w shapes")
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * activations).sum(1))


def normalise_cams(cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N x H x W maps in [0, 1]: upsampled bilinearly to `size`, each divided by its maximum (an
    all-zero map stays zero: no pixel's evidence is positive)."""
    up = F.interpolate(cams[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    up = up.clamp_min(0)  # bilinear interpolation of non-negative values is non-negative; rounding aside
    peak = up.flatten(1).max(1).values.view(-1, 1, 1)
    return torch.where(peak > 0, up / peak.clamp_min(torch.finfo(up.dtype).tiny), torch.zeros_like(up))


def segmentation_grad_cam(model: nn.Module, layer: nn.Module, inputs: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(CAMs N x h x w at the layer's resolution, the predicted labels N x H x W, the scores) of
    `model(inputs)` -> N x K x H x W scores, at the output of `layer`, a submodule of `model`.

    The layer's output is replaced, for what follows it, by a leaf copy that requires gradients:
    dS/dA is the gradient w.r.t. that copy, so no parameter needs gradients, nothing before the
    layer is differentiated, and an in-place operation after the layer cannot alter the saved A."""
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise ValueError(f"Grad-CAM needs a layer whose output is an N x C x h x w tensor, not {type(output).__name__}"
                             + (f" of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else ""))
        leaf = output.detach().clone().requires_grad_(True)
        captured["a"] = leaf
        return leaf

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            scores = model(inputs)
            if "a" not in captured:
                raise ValueError("the layer was not run by the model's forward pass")
            (gradients,) = torch.autograd.grad(segmentation_target(scores), captured["a"])
    finally:
        handle.remove()
    activations = captured["a"].detach()
    return grad_cam(activations, gradients), scores.detach().max(1).indices, scores.detach()
