"""Colour jitter whose parameters come from the caller's torch.Generator, so that a resumed run
replays the same augmentations (torchvision's ColorJitter draws from the global RNG).

The operations are torchvision's (`transforms.v2.functional`), in a random order as ColorJitter
applies them: brightness, contrast and saturation factors uniform in [1 - x, 1 + x], a hue shift
uniform in [-h, h]. Shared by MoCo v2's views and the self-supervised depth methods (monodepth2's
augmentation).
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF

OPERATIONS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


def _uniform(u: float, lo: float, hi: float) -> float:
    return lo + (hi - lo) * u


def jitter_params(gen: torch.Generator, brightness: float, contrast: float, saturation: float,
                  hue: float) -> list[tuple[int, float]]:
    """(operation index into OPERATIONS, factor) pairs in a random order. Always draws 4 uniforms
    and one permutation of 4, so the generator advances the same whatever the values."""
    u = torch.rand(4, generator=gen).tolist()
    factors = [_uniform(u[0], 1 - brightness, 1 + brightness), _uniform(u[1], 1 - contrast, 1 + contrast),
               _uniform(u[2], 1 - saturation, 1 + saturation), _uniform(u[3], -hue, hue)]
    return [(k, factors[k]) for k in torch.randperm(4, generator=gen).tolist()]


def apply_jitter(images: torch.Tensor, params: list[tuple[int, float]]) -> torch.Tensor:
    """float images in [0, 1], ...×3×H×W (every image gets the same parameters)."""
    for k, factor in params:
        images = OPERATIONS[k](images, factor)
    return images
