"""MoCo v2's augmented views, drawn from the step's generator.

The recipe of Chen et al. (MoCo v2), in its order: random resized crop (scale 0.2-1), colour
jitter (brightness, contrast, saturation 0.4, hue 0.1, in random order) with probability 0.8,
grayscale with probability 0.2, Gaussian blur (sigma 0.1-2.0) with probability 0.5, horizontal
flip. The image operations are torchvision's (`transforms.v2.functional`); only the parameters
are drawn here, per sample, from the caller's generator, so a resumed run replays the same views
(torchvision's transform classes draw from the global RNG).

Two adaptations to non-ImageNet inputs, both keeping the paper's relative geometry:
- the crop's aspect-ratio range (3/4-4/3) is relative to the view's own aspect ratio, so a wide
  driving frame yields wide crops instead of squares stretched to a wide view;
- the blur's sigma range is given for 224 px views and scaled by the view's short side / 224, so
  a small view is blurred as much, relative to its content, as the paper's.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF

from pretrain.color_jitter import apply_jitter, jitter_params

CROP_SCALE = (0.2, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10
JITTER_P, BRIGHTNESS, CONTRAST, SATURATION, HUE = 0.8, 0.4, 0.4, 0.4, 0.1
GRAYSCALE_P = 0.2
BLUR_P, BLUR_SIGMA, BLUR_REFERENCE_SIZE = 0.5, (0.1, 2.0), 224
FLIP_P = 0.5


def _uniform(u: float, lo: float, hi: float) -> float:
    return lo + (hi - lo) * u


def crop_box(gen: torch.Generator, height: int, width: int, out_aspect: float,
             scale: tuple[float, float] = CROP_SCALE) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering a fraction in `scale` (MoCo v2's CROP_SCALE by
    default; DINO's crops pass their own) of the area, with an aspect ratio in CROP_RATIO ×
    `out_aspect` (width / height); torchvision's RandomResizedCrop search, which falls back to
    the largest centred crop of the view's aspect after CROP_TRIES misses."""
    area = height * width
    u = torch.rand(CROP_TRIES, 4, generator=gen).tolist()
    log_lo, log_hi = math.log(CROP_RATIO[0] * out_aspect), math.log(CROP_RATIO[1] * out_aspect)
    for us, ur, uy, ux in u:
        target = area * _uniform(us, *scale)
        aspect = math.exp(_uniform(ur, log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(uy * (height - h + 1)), int(ux * (width - w + 1)), h, w
    if width / height > out_aspect:
        h, w = height, min(width, round(height * out_aspect))
    else:
        h, w = min(height, round(width / out_aspect)), width
    return (height - h) // 2, (width - w) // 2, h, w


def _jitter_params(gen: torch.Generator) -> list[tuple[int, float]]:
    """(operation index, factor) pairs in a random order, as torchvision's ColorJitter."""
    return jitter_params(gen, BRIGHTNESS, CONTRAST, SATURATION, HUE)


def moco_v2_view(gen: torch.Generator, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One augmented view of each image: uint8 (or float in [0, 1]) N×3×H×W → float N×3×h×w in
    [0, 1], `size` = (h, w)."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    height, width = x.shape[-2:]
    out_h, out_w = size
    sigma_scale = min(out_h, out_w) / BLUR_REFERENCE_SIZE
    views = []
    for img in x:
        # Every sample draws the same numbers of values whatever happens, so one sample's
        # outcome never shifts the next one's parameters.
        top, left, h, w = crop_box(gen, height, width, out_w / out_h)
        p_jitter, p_gray, p_blur, p_flip, u_sigma = torch.rand(5, generator=gen).tolist()
        jitter = _jitter_params(gen)  # drawn even when not applied, for the reason above
        img = TF.resized_crop(img, top, left, h, w, [out_h, out_w], antialias=True)
        if p_jitter < JITTER_P:
            img = apply_jitter(img, jitter)
        if p_gray < GRAYSCALE_P:
            img = TF.rgb_to_grayscale(img, num_output_channels=3)
        if p_blur < BLUR_P:
            sigma = _uniform(u_sigma, *BLUR_SIGMA) * sigma_scale
            k = 2 * math.ceil(3 * sigma) + 1  # covers +-3 sigma
            img = TF.gaussian_blur(img, [k, k], [sigma, sigma])
        if p_flip < FLIP_P:
            img = TF.horizontal_flip(img)
        views.append(img.clamp(0.0, 1.0))
    return torch.stack(views)
