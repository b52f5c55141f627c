"""Segmentation decoders: one module per head, registered by name (see `base`)."""

from __future__ import annotations

import importlib
import pkgutil

from transfer.decoders.base import (DecoderOptions, SegmentationDecoder, decoder_class, decoder_slug,  # noqa: F401
                                    list_decoders, options_help, parse_decoder_options, register_decoder,
                                    split_decoder_name)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
