"""The method interface every pre-training method implements, and its registry.

A method owns its networks (`modules`: everything the resume snapshot must hold; the encoder of
`checkpoint_encoder()` -- `encoder` unless the method says otherwise -- and the optional `decoder`
are what the checkpoint keeps), draws its batches from a `Batches` of the data kind it trains on,
and returns a loss per step. The shared loop (`pretrain.loop`) does the optimisation, NaN
handling, snapshots and history; a method never sees the optimiser. The loop sets `step` (the
0-based index of the step being taken) before each `loss`, for methods with schedules, and calls
`adjust_gradients` between the backward pass and the optimiser step.

Method-specific settings are a pydantic `Options` model: the CLI's `-o KEY=VALUE` and the
manifest's `pretrain.options` are validated by it, and `bench pretrain --help` lists them.

Add a method with a module in this package (it is imported automatically):

    @register_method
    class MyMethod(PretrainMethod):
        name = "my_method"
        kind = "image"           # the data kind of pretrain.sources.base
        class Options(MethodOptions):
            temperature: float = Field(0.2, gt=0, description="...")
        def loss(self, gen, batch_size): ...
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from bench.core.errors import UserError
from bench.core.options import options_help as _options_help
from bench.core.options import parse_options as _parse_options
from bench.core.registry import Registry
from bench.core.sizes import too_small
from bench.core.models.backbones import create_encoder, normalize
from pretrain.batches import Batches
from pretrain.sources.base import PretrainSource



class MethodOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PretrainMethod:
    name: ClassVar[str]
    kind: ClassVar[str]
    Options: ClassVar[type[MethodOptions]] = MethodOptions

    def __init__(self, config: dict, source: PretrainSource):
        self.config = config
        self.options = parse_options(type(self), config.get("options") or {})
        self.batches = Batches(source, self.kind, self.name, resize=config.get("resize"), crop=config.get("crop"))
        why = too_small(self.batches.out_size)
        if why:
            raise UserError(f"training size {why}; use a larger --resize or --crop")
        self.encoder = create_encoder(config["arch"])
        self.decoder: nn.Module | None = None
        self.modules: dict[str, nn.Module] = {"encoder": self.encoder}
        self.device = torch.device("cpu")
        self.step = 0  # set by the loop before each step (a resumed run starts at its snapshot's)

    def to_device(self, device: torch.device, channels_last: bool = False) -> None:
        """Move every network (and the batches `draw` makes) to `device`; channels-last memory
        for the convolutions when asked (CUDA). A method holding tensors outside `modules`
        moves them too."""
        self.device = device
        for module in self.modules.values():
            module.to(device)
            if channels_last:
                module.to(memory_format=torch.channels_last)
        self.batches.device = device

    def normalized(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N×3×H×W (or float in [0, 1], e.g. augmented) → float input normalised as the
        encoder's weights expect."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        return normalize(x, self.encoder.normalization)

    @property
    def image_size(self) -> tuple[int, int]:
        """HxW of the images the encoder trains on: the checkpoint records it (`image_size`), and
        transfer records report it as their `pretrain_size`. A method that resizes its batches
        again (contrastive views) says so by overriding this."""
        return tuple(self.batches.out_size)

    def after_init(self) -> None:
        """Called once `--init` has loaded the encoder (and decoder body): a method whose other
        networks start from the same weights (the pose net of `depth_video`) copies them here."""

    def loss(self, gen: torch.Generator, batch_size: int) -> tuple[torch.Tensor | None, dict]:
        """The step's loss (None: nothing to learn from in this batch, skip it) and its named terms."""
        raise NotImplementedError

    def adjust_gradients(self) -> None:
        """Called after the backward pass (gradients unscaled and averaged over the ranks) and
        before the loop's norm check, clipping and optimiser step: a method that clips per
        parameter or holds some parameters still (DINO's frozen last layer) does it here."""

    def after_step(self) -> None:
        """Called after each optimiser step (momentum encoders update here)."""

    def checkpoint_encoder(self) -> nn.Module:
        """The encoder whose weights the checkpoint keeps: the trained `encoder`, unless the method
        evaluates another network (DINO keeps its teacher)."""
        return self.encoder

    def decoder_meta(self) -> dict | None:
        """What the checkpoint says about `decoder` (its `kind` decides whether transfer can reuse it)."""
        return None

    def extra_meta(self) -> dict:
        """Anything else the checkpoint metadata should record (e.g. max depth, learned intrinsics)."""
        return {}

    @classmethod
    def content_ids(cls, options: MethodOptions) -> dict:
        """Hashes of files the options name by path, so that new contents under an old name make
        a new training (added to the config fingerprint)."""
        return {}


METHODS: Registry[PretrainMethod] = Registry("pre-training method")
register_method = METHODS.register
list_methods = METHODS.names
method_class = METHODS.get


def parse_options(cls: type[PretrainMethod], options: dict) -> MethodOptions:
    """Validate a method's options; the first problem becomes one line."""
    return _parse_options(cls.Options, options, f"--method {cls.name}")


def options_help(cls: type[PretrainMethod]) -> list[str]:
    """One line per option: name, default, description (for --help and the docs)."""
    return _options_help(cls.Options)
