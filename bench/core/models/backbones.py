"""Backbone registry: named encoders that return multi-scale feature maps.

Every encoder's state-dict keys are exactly timm's (and, for ResNets, torchvision's), so foreign
weights load without renaming. Two families:

- CNNs (`family="cnn"`): a `timm` model built with `features_only=True`; ResNets give five
  levels at strides 2, 4, 8, 16, 32.
- ViTs (`family="vit"`): a timm `VisionTransformer` giving four levels at strides 4, 8, 16, 32
  from four intermediate blocks, as Depth Anything / DPT take them (`bench.core.models.vit`).

The built module carries `channels` and `strides` per level, `feature_info`, and the input
normalisation its weights expect, which checkpoints record. `forward(x)` takes an
ImageNet-normalised N×3×H×W batch of any size and returns one map per level, of size
ceil(H/stride) × ceil(W/stride).

Add a backbone with the decorator:

    @register_backbone("my_net")
    def my_net() -> BackboneSpec:
        return BackboneSpec(timm_name="my_net_from_timm")   # a ViT: add family="vit"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import nn

from bench.core.errors import UserError
from bench.core.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Input normalisations by name, as checkpoints record them ({"mean": [...], "std": [...]}, applied
# to [0, 1] RGB). `monodepth2`: the encoders of monodepth2 and the projects built on it
# (DepthToSemantic, NimbleD) normalise inside their own forward with (x - 0.45) / 0.225.
# `half`: (x - 0.5) / 0.5, e.g. timm's AugReg ViTs and Inception weights.
NORMALIZATIONS = {
    "imagenet": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
    "monodepth2": {"mean": [0.45] * 3, "std": [0.225] * 3},
    "half": {"mean": [0.5] * 3, "std": [0.5] * 3},
}


def parse_normalization(value, what: str = "normalization") -> dict | None:
    """A name of NORMALIZATIONS, a {mean, std} mapping, or `MEAN/STD` text (`0.45/0.225`, or three
    values each: `0.5,0.4,0.3/0.2,0.2,0.2`) -> {"mean": [3 floats], "std": [3 floats]}; None stays None."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in NORMALIZATIONS:
        return {k: list(v) for k, v in NORMALIZATIONS[value.strip().lower()].items()}
    if isinstance(value, str) and "/" in value:
        mean, _, std = value.partition("/")
        value = {"mean": mean.split(","), "std": std.split(",")}
    if not isinstance(value, dict) or set(value) != {"mean", "std"}:
        raise UserError(f"{what}: give one of {', '.join(NORMALIZATIONS)}, MEAN/STD (e.g. 0.45/0.225) or "
                        f"{{mean: [r, g, b], std: [r, g, b]}}, got {value!r}")
    out = {}
    for key in ("mean", "std"):
        values = value[key] if isinstance(value[key], (list, tuple)) else [value[key]]
        try:
            numbers = [float(v) for v in values]
        except (TypeError, ValueError):
            raise UserError(f"{what}: {key} must be numbers, got {value[key]!r}") from None
        if len(numbers) == 1:
            numbers *= 3
        if len(numbers) != 3 or (key == "std" and min(numbers) <= 0):
            raise UserError(f"{what}: {key} needs one or three {'positive ' if key == 'std' else ''}values, "
                            f"got {value[key]!r}")
        out[key] = numbers
    return out


@dataclass(frozen=True)
class BackboneSpec:
    timm_name: str
    # Which of timm's feature levels to return (CNNs); None means all of them.
    out_indices: tuple[int, ...] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    timm_kwargs: dict = field(default_factory=dict)
    family: Literal["cnn", "vit", "entry"] = "cnn"
    # ViTs: the four blocks tapped; None derives them from the depth (`bench.core.models.vit.default_blocks`).
    blocks: tuple[int, ...] | None = None


# Registered archs -> a function building the arch's spec (its docstring is `bench list archs`).
BACKBONES: Registry[Callable[[], BackboneSpec]] = Registry("arch")


def register_backbone(name: str):
    """Decorator: `@register_backbone("my_net")` on a function returning the BackboneSpec."""
    return BACKBONES.register_as(name)


def list_backbones() -> list[str]:
    return BACKBONES.names()


def is_known_arch(arch: str) -> bool:
    """Registered, or user code named as `entry:MODULE:FUNCTION` (bench/core/models/entry.py)."""
    from bench.core.models.entry import is_entry

    return arch in BACKBONES or is_entry(arch)


def backbone_spec(arch: str) -> BackboneSpec:
    from bench.core.models.entry import is_entry

    if is_entry(arch):
        return BackboneSpec(timm_name="", family="entry")
    if arch not in BACKBONES:
        raise UserError(f"unknown arch {arch!r}; registered: {', '.join(list_backbones())}")
    return BACKBONES.get(arch)()


def create_encoder(arch: str, init: str = "timm", **timm_overrides) -> nn.Module:
    """Build a randomly initialised encoder; weights come from checkpoints, never the network.

    `init` is the random initialisation scheme (`bench.core.models.initialisation`: timm's, or
    torchvision's for the random baseline); the built module records the one it got as
    `init_scheme`. `timm_overrides` change the structure but never the weights' names or shapes
    (e.g. a decoder's `output_stride`, which dilates the last stages instead of striding them; a
    ViT resamples its deepest levels at that stride instead)."""
    import timm

    from bench.core.models.initialisation import effective_random_init, torchvision_init_

    spec = backbone_spec(arch)
    scheme = effective_random_init(spec.family, init)
    kwargs = {**spec.timm_kwargs, **timm_overrides}
    if spec.family == "entry":
        from bench.core.models.entry import entry_encoder

        model = entry_encoder(arch, spec.mean, spec.std, **timm_overrides)
    elif spec.family == "vit":
        from bench.core.models.vit import vit_encoder

        model = vit_encoder(spec.timm_name, arch=arch, mean=spec.mean, std=spec.std, blocks=spec.blocks, **kwargs)
    else:
        if spec.out_indices is not None:
            kwargs["out_indices"] = spec.out_indices
        model = timm.create_model(spec.timm_name, pretrained=False, features_only=True, **kwargs)
        model.arch = arch
        model.channels = list(model.feature_info.channels())
        model.strides = list(model.feature_info.reduction())
        model.normalization = {"mean": list(spec.mean), "std": list(spec.std)}
        if scheme == "torchvision":
            torchvision_init_(model)
    model.init_scheme = scheme
    return model


def normalize(images: torch.Tensor, normalization: dict) -> torch.Tensor:
    """uint8-range-free normalisation: `images` are float in [0, 1], NCHW."""
    mean = torch.tensor(normalization["mean"], device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(normalization["std"], device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std


# ResNets: five levels at strides 2, 4, 8, 16, 32 -- the monodepth2 encoder layout.
@register_backbone("resnet18")
def _resnet18() -> BackboneSpec:
    """ResNet-18 (timm/torchvision keys), five levels at strides 2-32: the monodepth2 encoder."""
    return BackboneSpec(timm_name="resnet18")


@register_backbone("resnet34")
def _resnet34() -> BackboneSpec:
    """ResNet-34, five levels at strides 2-32."""
    return BackboneSpec(timm_name="resnet34")


@register_backbone("resnet50")
def _resnet50() -> BackboneSpec:
    """ResNet-50, five levels at strides 2-32."""
    return BackboneSpec(timm_name="resnet50")


# A ~5M-parameter ResNet for quick CPU runs and tests.
@register_backbone("resnet10t")
def _resnet10t() -> BackboneSpec:
    """timm ResNet-10-T (~5M parameters), for quick CPU runs and tests."""
    return BackboneSpec(timm_name="resnet10t")


# ViTs: four levels at strides 4, 8, 16, 32 from blocks 2, 5, 8, 11 (12 blocks), final norm applied.
@register_backbone("vit_small_patch14_dinov2")
def _vit_small_dinov2() -> BackboneSpec:
    """DINOv2 ViT-S/14 (Depth Anything Small's encoder), four levels at strides 4-32."""
    return BackboneSpec(timm_name="vit_small_patch14_dinov2", family="vit")


@register_backbone("vit_base_patch14_dinov2")
def _vit_base_dinov2() -> BackboneSpec:
    """DINOv2 ViT-B/14 (Depth Anything Base's encoder), four levels at strides 4-32."""
    return BackboneSpec(timm_name="vit_base_patch14_dinov2", family="vit")


@register_backbone("vit_small_patch16_224")
def _vit_small_patch16() -> BackboneSpec:
    """ViT-S/16 (DINO's; timm's `.dino` weights fit it), four levels at strides 4-32."""
    return BackboneSpec(timm_name="vit_small_patch16_224", family="vit")


@register_backbone("vit_base_patch16_224")
def _vit_base_patch16() -> BackboneSpec:
    """ViT-B/16 (MAE's and DINO's; timm's `.mae`/`.dino` weights fit it), four levels at strides 4-32."""
    return BackboneSpec(timm_name="vit_base_patch16_224", family="vit")


# A ~5M-parameter ViT for quick CPU runs and tests.
@register_backbone("vit_tiny_patch16_224")
def _vit_tiny_patch16() -> BackboneSpec:
    """ViT-Ti/16 (~5M parameters), for quick CPU runs and tests."""
    return BackboneSpec(timm_name="vit_tiny_patch16_224", family="vit")
