"""Segmentation networks: a harness encoder plus a registered decoder, built from a checkpoint.

The encoder and the decoder stay separate modules: `encode` runs the encoder (without autograd
once it is frozen), the decoder maps feature levels to class scores. Training code that caches a
frozen encoder's features (`transfer.feature_cache`) calls the decoder directly.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.core.checkpoint import Checkpoint, load_encoder_weights
from bench.core.errors import UserError
from bench.core.models.backbones import create_encoder, normalize
from transfer.decoders import SegmentationDecoder, decoder_class, parse_decoder_options

INITS = ("auto", "encoder+decoder", "encoder")


class SegmentationModel(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: SegmentationDecoder, decoder_kind: str):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.decoder_kind = decoder_kind
        self.encoder_frozen = False

    def freeze_encoder(self) -> None:
        """Weights out of autograd and BatchNorm statistics fixed (eval mode) for good."""
        self.encoder_frozen = True
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def encode(self, images_uint8: torch.Tensor) -> list[torch.Tensor]:
        x = normalize(images_uint8.float() / 255.0, self.encoder.normalization)
        if self.encoder_frozen:
            with torch.no_grad():
                return self.encoder(x)
        return self.encoder(x)

    def features(self, images_uint8: torch.Tensor) -> list[torch.Tensor | None]:
        """What the decoder's `forward` and `loss` take: its `prepare` of the encoder's levels."""
        return self.decoder.prepare(self.encode(images_uint8))

    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.features(images_uint8), images_uint8.shape[-2:])


def build_model(arch: str, checkpoint: Checkpoint | None, decoder_kind: str, init: str,
                num_classes: int, decoder_options: dict | None = None,
                random_init: str = "timm") -> tuple[SegmentationModel, dict]:
    """The model and a description of how it was initialised (recorded with the run).
    `random_init` is the scheme of an encoder without a checkpoint (the random baseline)."""
    cls = decoder_class(decoder_kind)
    options = parse_decoder_options(decoder_kind, decoder_options)
    if init not in INITS:
        raise UserError(f"unknown init {init!r}; available: {', '.join(INITS)}")
    encoder = create_encoder(arch, init=random_init if checkpoint is None else "timm", **cls.encoder_kwargs(options))
    info = {"requested": init, "effective": "none", "encoder_coverage": None, "decoder_tensors_loaded": 0}
    if checkpoint is None:
        info["random_init"] = encoder.init_scheme
    else:
        # What the pre-training started from (None for checkpoints that do not say: imported ones).
        info["pretraining_init"] = checkpoint.meta.get("encoder_init")
    if checkpoint is not None:
        if checkpoint.meta["arch"] != arch:
            raise UserError(f"{checkpoint.path}: checkpoint arch {checkpoint.meta['arch']!r} differs from {arch!r}")
        info["encoder_coverage"] = load_encoder_weights(encoder, checkpoint.encoder, source=str(checkpoint.path))
        encoder.normalization = checkpoint.meta["normalization"]
        info["effective"] = "encoder"
    decoder = cls(encoder.channels, encoder.strides, num_classes, options)

    saved = checkpoint.meta.get("decoder") if checkpoint is not None else None
    saved_kind = saved.get("kind") if saved else None
    reusable = cls.reuses is not None and saved_kind == cls.reuses and bool(checkpoint.decoder)
    if init == "encoder+decoder" and not reusable:
        where = checkpoint.path if checkpoint is not None else "random init"
        if cls.reuses is None:
            raise UserError(f"init encoder+decoder: the {decoder_kind} decoder has no pre-trained counterpart to reuse "
                            f"(only {', '.join(sorted(_reusing()))} can); use --init encoder")
        found = f"a {saved_kind} decoder" if saved_kind else "no decoder weights"
        raise UserError(f"{where}: init encoder+decoder needs {cls.reuses} decoder weights, and this checkpoint has "
                        f"{found}; use --init encoder")
    if reusable and init in ("auto", "encoder+decoder"):
        loaded = decoder.load_body(checkpoint.decoder)  # only the last layer stays fresh
        if not loaded:
            raise UserError(f"{checkpoint.path}: decoder weights do not match the {decoder_kind} decoder layout")
        info["effective"] = "encoder+decoder"
        info["decoder_tensors_loaded"] = loaded
    return SegmentationModel(encoder, decoder, decoder_kind), info


def _reusing() -> set[str]:
    from transfer.decoders.base import DECODERS

    return {name for name, c in DECODERS.items() if c.reuses is not None}
