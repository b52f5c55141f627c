"""DINO's multi-crop views (Caron et al. 2021), drawn from the step's generator.

Two global crops and `n_local` local crops of each image, as DINO's `DataAugmentationDINO`:

| crop | scale of the area | blur (probability) | solarisation |
|---|---|---|---|
| global 1 | GLOBAL_SCALE (0.4-1) | always | never |
| global 2 | GLOBAL_SCALE | 0.1 | 0.2 |
| local (each) | LOCAL_SCALE (0.05-0.4) | 0.5 | never |

Every crop is a random resized crop (bicubic), then a horizontal flip (0.5), colour jitter
(brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, in random order) with probability 0.8,
grayscale with probability 0.2, then the crop's blur (sigma uniform in 0.1-2.0) and
solarisation (pixels at or above 128/255 inverted, as PIL's ImageOps.solarize). The image
operations are torchvision's; only their parameters are drawn here, per sample, so a resumed
run replays the same crops.

Adapted to the harness's frames (DINO crops 224 px globals and 96 px locals out of ImageNet
photographs):
- the global size defaults to the training size, and the local size keeps DINO's ratio,
  96/224 of the global one on each side (`local_size`);
- as in `pretrain.moco_views`, the crop's aspect-ratio range (3/4-4/3) is relative to the
  view's aspect ratio, so a wide driving frame yields wide crops;
- the blur's sigma range, given by DINO in pixels of 224 px globals, is scaled by the global
  short side / 224 for every crop: the locals keep DINO's blur relative to the globals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from pretrain.color_jitter import apply_jitter, jitter_params
from pretrain.moco_views import crop_box

GLOBAL_SCALE = (0.4, 1.0)
LOCAL_SCALE = (0.05, 0.4)
REFERENCE_GLOBAL, REFERENCE_LOCAL = 224, 96  # DINO's crop sides in pixels
# The smallest local side: one 16 px ViT patch, one cell of a stride-32 CNN's last level.
MIN_LOCAL_SIDE = 16
FLIP_P, JITTER_P, GRAYSCALE_P = 0.5, 0.8, 0.2
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0.4, 0.4, 0.2, 0.1
BLUR_SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 128 / 255


@dataclass(frozen=True)
class CropRecipe:
    size: tuple[int, int]
    scale: tuple[float, float]
    blur_p: float
    solarize_p: float


def local_size(global_size: tuple[int, int]) -> tuple[int, int]:
    """DINO's local-to-global side ratio (96/224) applied to each side of `global_size`."""
    return tuple(max(MIN_LOCAL_SIDE, round(side * REFERENCE_LOCAL / REFERENCE_GLOBAL)) for side in global_size)


def recipes(global_size, local_size_, n_local: int, global_scale=GLOBAL_SCALE, local_scale=LOCAL_SCALE):
    """The 2 + n_local crops' recipes, globals first (the teacher takes the first two)."""
    g1 = CropRecipe(tuple(global_size), tuple(global_scale), blur_p=1.0, solarize_p=0.0)
    g2 = CropRecipe(tuple(global_size), tuple(global_scale), blur_p=0.1, solarize_p=0.2)
    local = CropRecipe(tuple(local_size_), tuple(local_scale), blur_p=0.5, solarize_p=0.0)
    return [g1, g2] + [local] * n_local


def _uniform(u: float, lo: float, hi: float) -> float:
    return lo + (hi - lo) * u


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    k = 2 * math.ceil(3 * sigma) + 1  # covers +-3 sigma
    # Reflection padding needs the half-kernel below the image side: cap it on tiny crops.
    limit = 2 * min(img.shape[-2:]) - 1
    k = min(k, limit if limit % 2 else limit - 1)
    return TF.gaussian_blur(img, [k, k], [sigma, sigma])


def dino_crop(gen: torch.Generator, x: torch.Tensor, recipe: CropRecipe, sigma_scale: float) -> torch.Tensor:
    """One crop of each image of float N×3×H×W in [0, 1] after `recipe` → N×3×h×w in [0, 1]."""
    height, width = x.shape[-2:]
    out_h, out_w = recipe.size
    views = []
    for img in x:
        # A fixed number of draws per sample whatever happens, so that one sample's outcome
        # never shifts the next one's parameters.
        top, left, h, w = crop_box(gen, height, width, out_w / out_h, recipe.scale)
        p_flip, p_jitter, p_gray, p_blur, u_sigma, p_solarize = torch.rand(6, generator=gen).tolist()
        jitter = jitter_params(gen, BRIGHTNESS, CONTRAST, SATURATION, HUE)
        img = TF.resized_crop(img, top, left, h, w, [out_h, out_w], interpolation=InterpolationMode.BICUBIC,
                              antialias=True).clamp(0.0, 1.0)  # bicubic overshoots
        if p_flip < FLIP_P:
            img = TF.horizontal_flip(img)
        if p_jitter < JITTER_P:
            img = apply_jitter(img, jitter)
        if p_gray < GRAYSCALE_P:
            img = TF.rgb_to_grayscale(img, num_output_channels=3)
        if p_blur < recipe.blur_p:
            img = _blur(img, _uniform(u_sigma, *BLUR_SIGMA) * sigma_scale)
        if p_solarize < recipe.solarize_p:
            img = TF.solarize(img, SOLARIZE_THRESHOLD)
        views.append(img.clamp(0.0, 1.0))
    return torch.stack(views)


def multi_crop(gen: torch.Generator, images: torch.Tensor, crop_recipes: list[CropRecipe]) -> list[torch.Tensor]:
    """The crops of `crop_recipes` (see `recipes`) of uint8 (or float in [0, 1]) N×3×H×W images:
    one float N×3×h×w tensor in [0, 1] per recipe, in order."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    sigma_scale = min(crop_recipes[0].size) / REFERENCE_GLOBAL
    return [dino_crop(gen, x, recipe, sigma_scale) for recipe in crop_recipes]
