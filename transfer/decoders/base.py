"""The decoder interface every segmentation head implements, and its registry.

A decoder is an `nn.Module` over the encoder's feature levels (a list of N×C×h×w tensors at the
strides of `encoder.strides`). The encoder stays outside it, so freezing, feature caching, CKA and
the encoder digests treat every decoder alike:

- `prepare(features)` is the parameter-free first stage of the head (by default: drop the levels
  it does not read, i.e. set them to None; a head may resample or pool here, or read what else
  the encoder's output carries: a ViT's is a `bench.core.models.vit.ViTLevels` with the raw
  token grids and class tokens in `.tokens`, and its `strides` a `TokenGridStrides`). For
  a frozen encoder its output is what the feature cache stores, so work done here is done once
  per view. `forward` and `loss` take its output (`SegmentationModel.features` chains the two);
- `forward(prepared, size)` returns per-class scores N×K×H×W at `size` (the argmax is the label
  map);
- `loss(prepared, labels, ignore_index)` is the training loss (cross-entropy on `forward` unless
  the head has its own, as Mask2Former does);
- `reuses` names the pre-training decoder kind whose body `load_body` can take over
  (`--init encoder+decoder`); None for heads that always start fresh.

Decoder-specific settings are a pydantic `Options` model, validated from `--decoder-option
KEY=VALUE` and the manifest's `transfer.decoder_options.<decoder>`. A decoder may ask for a
different encoder (e.g. DeepLabV3's output stride) through `encoder_kwargs`.

Add a decoder with a module in this package (imported automatically):

    @register_decoder
    class MyHead(SegmentationDecoder):
        name = "my_head"
        class Options(DecoderOptions):
            width: int = Field(256, ge=1, description="...")
        def __init__(self, channels, strides, num_classes, options): ...
        def forward(self, features, size): ...

Names of the form `PREFIX:ARGUMENT` (e.g. `mmseg:configs/mmseg/aspp.py`) go to the decoder
registered under `PREFIX:`; the argument reaches it as the option `spec`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from bench.core.errors import UserError
from bench.core.options import options_help as _options_help
from bench.core.options import parse_options
from bench.core.registry import Registry


class DecoderOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SegmentationDecoder(nn.Module):
    name: ClassVar[str]
    Options: ClassVar[type[DecoderOptions]] = DecoderOptions
    reuses: ClassVar[str | None] = None

    @classmethod
    def encoder_kwargs(cls, options: DecoderOptions) -> dict:
        """Extra `timm.create_model` arguments the encoder needs for this head (weights unchanged)."""
        return {}

    @classmethod
    def content_ids(cls, options: DecoderOptions) -> dict:
        """Hashes of files the options name by path (added to the cell's fingerprint)."""
        return {}

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def used_levels(self, num_levels: int) -> list[int]:
        """The feature levels the head reads."""
        return list(range(num_levels))

    def prepare(self, features: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """The parameter-free first stage (see the module docstring)."""
        used = set(self.used_levels(len(features)))
        return [f if i in used else None for i, f in enumerate(features)]

    def loss(self, features: list[torch.Tensor], labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
        return F.cross_entropy(self(features, labels.shape[-2:]), labels, ignore_index=ignore_index)

    def load_body(self, state: dict[str, torch.Tensor]) -> int:
        """Take over a pre-trained decoder's body; the number of tensors loaded (0: incompatible)."""
        return 0


# A prefix decoder is listed as `prefix:ARG`.
DECODERS: Registry[SegmentationDecoder] = Registry("decoder", lambda n: n + "ARG" if n.endswith(":") else n)
register_decoder = DECODERS.register
list_decoders = DECODERS.names


def split_decoder_name(name: str) -> tuple[str, str | None]:
    """`mmseg:path/cfg.py` -> ("mmseg:", "path/cfg.py"); `deeplabv3` -> ("deeplabv3", None)."""
    if ":" in name:
        prefix, arg = name.split(":", 1)
        if not arg:
            raise UserError(f"decoder {name!r}: nothing after '{prefix}:'")
        return prefix + ":", arg
    return name, None


def decoder_class(name: str) -> type[SegmentationDecoder]:
    return DECODERS.get(split_decoder_name(name)[0], shown=name)


def decoder_slug(name: str) -> str:
    """A file-name-safe form of the decoder name, for cell folder names."""
    key, arg = split_decoder_name(name)
    if arg is None:
        return name
    stem = arg.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return key[:-1] + "-" + "".join(c if c.isalnum() or c in "_.-" else "_" for c in stem)


def parse_decoder_options(name: str, options: dict | None) -> DecoderOptions:
    """Validate a decoder's options; the first problem becomes one line."""
    cls = decoder_class(name)
    options = dict(options or {})
    _, arg = split_decoder_name(name)
    if arg is not None:
        options.setdefault("spec", arg)  # a resolved path given as an option wins over the name's text
    return parse_options(cls.Options, options, f"decoder {name}", hidden=("spec",))


def options_help(cls: type[SegmentationDecoder]) -> list[str]:
    return _options_help(cls.Options, hidden=("spec",))
