"""Checking an import against its arch, and writing it as a harness checkpoint.

`validate(imported, arch, allow_partial=False)` refuses, each with one line:
- a non-finite tensor (NaN/Inf), naming the first one;
- anything short of every encoder tensor loading by name and shape, unless `allow_partial`;
- a monodepth2 decoder that does not load strictly into `UNetDecoder` for the arch's channels
  (an error for monodepth2 folders, whose decoder is the point; other formats drop it with a note);
- a forward probe whose features differ from the encoder's declared channels and strides, or are
  not finite.
It returns a JSON-able report: format, arch, sha256 per source file, the key report
(loaded/total/missing/unexpected/shape_mismatched), dropped names, notes, decoder, probe shapes.

`convert(...)` validates, then writes the encoder (and decoder) with `save_checkpoint`. With
`allow_partial` the tensors the file lacks keep the arch's seed-0 initialisation, so the written
checkpoint loads in full everywhere else; its `provenance` block records that it was partial.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from bench.core.checkpoint import file_sha256, load_encoder_weights, save_checkpoint
from bench.core.errors import UserError
from bench.core.models.backbones import NORMALIZATIONS, parse_normalization
from bench.importers.formats import IMPORT_FORMATS, Imported, read_foreign

PROBE_SIZE = (64, 96)  # small, and not a multiple of a ViT's 14-pixel patches on purpose


def _source(imported: Imported) -> str:
    return ", ".join(str(p) for p in imported.sources) or "checkpoint"


def _first_nonfinite(state: dict[str, torch.Tensor]) -> str | None:
    for name, t in state.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            return name
    return None


def _check_finite(imported: Imported) -> None:
    for part, state in (("encoder", imported.encoder), ("decoder", imported.decoder or {})):
        bad = _first_nonfinite(state)
        if bad is not None:
            raise UserError(f"{_source(imported)}: {part} tensor {bad!r} holds NaN or Inf values; refused")


def _load_encoder(imported: Imported, arch: str, allow_partial: bool):
    from bench.core.models.backbones import create_encoder

    torch.manual_seed(0)  # tensors a partial import lacks keep a reproducible initialisation
    encoder = create_encoder(arch)
    own = encoder.state_dict()
    for name, tensor in imported.encoder.items():
        if name in own and own[name].shape != tensor.shape and not allow_partial:
            raise UserError(f"{_source(imported)}: {name} has shape {tuple(tensor.shape)} in the file but "
                            f"{tuple(own[name].shape)} in {arch}; is --arch right? (or allow_partial)")
    report = load_encoder_weights(encoder, imported.encoder, allow_partial=True)
    if report["loaded"] < report["total"] and not allow_partial:
        gaps = report["missing"] + report["shape_mismatched"]
        raise UserError(f"{_source(imported)}: {imported.format} weights fill {report['loaded']}/{report['total']} "
                        f"tensors of {arch} (missing e.g. {', '.join(gaps[:3])}); check --arch and --format, "
                        f"add a --key-map, or allow a partial load")
    return encoder, report


def _check_decoder(imported: Imported, encoder, notes: list[str]) -> dict | None:
    """Strictly load a monodepth2 decoder into the harness UNetDecoder; its summary, or None."""
    meta = imported.decoder_meta or {}
    if not imported.decoder or meta.get("kind") != "monodepth2":
        return {"kind": meta.get("kind"), "tensors": len(imported.decoder)} if imported.decoder else None
    from bench.core.models.unet_decoder import UNetDecoder

    heads = sorted({int(k.split(".")[1]) for k in imported.decoder if k.startswith("heads.")})
    out_channels = int(imported.decoder[f"heads.{heads[0]}.1.weight"].shape[0]) if heads else 1
    try:
        decoder = UNetDecoder(encoder.channels, out_channels, scales=tuple(heads) or (0,))
        decoder.load_state_dict(imported.decoder, strict=True)
    except (RuntimeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()
        reason = " ".join(line.strip() for line in reason[1:3]) if len(reason) > 1 else (reason[0] if reason else "")
        if imported.format == "monodepth2":
            raise UserError(f"{_source(imported)}: the depth decoder does not fit {encoder.arch}'s U-Net decoder "
                            f"({reason[:200]})") from None
        notes.append(f"dropped the decoder: it does not fit {encoder.arch}'s U-Net decoder ({reason[:120]})")
        imported.decoder, imported.decoder_meta = None, None
        return None
    return {"kind": "monodepth2", "tensors": len(imported.decoder), "scales": heads, "out_channels": out_channels,
            "module": decoder}


@torch.no_grad()
def _probe(encoder, decoder, source: str) -> dict:
    """Run a dummy image through the encoder (and decoder); check level count, channels, strides, finiteness."""
    h, w = PROBE_SIZE
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, h, w, generator=gen)
    encoder.eval()
    features = list(encoder(x))
    arch = f"{source}: {encoder.arch}"
    if len(features) != len(encoder.channels):
        raise UserError(f"{arch}: the probe gave {len(features)} feature levels, "
                        f"the encoder declares {len(encoder.channels)}")
    shapes = []
    for i, (f, c, s) in enumerate(zip(features, encoder.channels, encoder.strides)):
        ok_hw = all(size in (math.floor(full / s), math.ceil(full / s)) for size, full in zip(f.shape[-2:], (h, w)))
        if f.shape[1] != c or not ok_hw:
            raise UserError(f"{arch}: probe level {i} is {tuple(f.shape[1:])}, expected {c} channels at stride {s}")
        if not bool(torch.isfinite(f).all()):
            raise UserError(f"{arch}: probe level {i} has non-finite values with the imported weights")
        shapes.append(list(f.shape[1:]))
    probe = {"input": [h, w], "features": shapes}
    if decoder is not None:
        decoder.eval()
        outputs = decoder(features, (h, w))
        if not all(bool(torch.isfinite(o).all()) for o in outputs.values()):
            raise UserError(f"{arch}: the imported decoder gives non-finite outputs on the probe")
        probe["decoder_outputs"] = {str(s): list(o.shape[1:]) for s, o in outputs.items()}
    return probe


def _validate(imported: Imported, arch: str, allow_partial: bool):
    _check_finite(imported)
    encoder, keys = _load_encoder(imported, arch, allow_partial)
    notes = list(imported.notes)
    decoder_info = _check_decoder(imported, encoder, notes)
    decoder_module = decoder_info.pop("module", None) if decoder_info else None
    probe = _probe(encoder, decoder_module, _source(imported))
    report = {
        "format": imported.format,
        "arch": arch,
        "sources": {str(p): file_sha256(p) for p in imported.sources},
        "loaded": keys["loaded"],
        "total": keys["total"],
        "missing": keys["missing"],
        "unexpected": keys["unexpected"],
        "shape_mismatched": keys["shape_mismatched"],
        "dropped": list(imported.dropped),
        "allow_partial": bool(allow_partial),
        "decoder": decoder_info,
        "probe": probe,
        "notes": notes,
    }
    return report, encoder


def validate(imported: Imported, arch: str, allow_partial: bool = False) -> dict:
    """The JSON-able import report; raises `UserError` when the import is refused (module docstring)."""
    return _validate(imported, arch, allow_partial)[0]


def _encoder_state(imported: Imported, encoder, report: dict) -> dict[str, torch.Tensor]:
    """The file's own tensors for every name that loaded (bit-identical, dtype kept); the arch's
    seed-0 initialisation for the rest (a partial import); names the arch lacks are not written."""
    state = dict(encoder.state_dict())
    skip = set(report["shape_mismatched"])
    for name, tensor in imported.encoder.items():
        if name in state and name not in skip:
            state[name] = tensor
    return state


def convert(path, arch: str, out_path, fmt: str = "auto", key_map=None, allow_partial: bool = False,
            name: str | None = None, normalization=None) -> tuple[Path, dict]:
    """Read, validate and write a foreign checkpoint as a harness checkpoint; (path written, report).

    The checkpoint records the input normalisation its weights expect: `normalization` when given
    (a name, MEAN/STD or a mapping: `parse_normalization`), else the source format's (monodepth2's
    family normalises inside its encoder with 0.45 / 0.225), else the arch's (ImageNet)."""
    override = parse_normalization(normalization, "--normalization")
    imported = read_foreign(path, arch, fmt=fmt, key_map=key_map)
    report, encoder = _validate(imported, arch, allow_partial)
    layout = IMPORT_FORMATS.get(imported.format)
    if imported.format == "harness":
        source_norm, said_by = imported.source_meta.get("normalization"), "checkpoint"
    elif layout.normalization:
        source_norm, said_by = NORMALIZATIONS[layout.normalization], f"format ({layout.normalization})"
    else:
        source_norm, said_by = encoder.normalization, "arch"
    report["normalization"] = {**(override or source_norm), "source": "override" if override else said_by}
    if key_map is not None and isinstance(key_map, (str, Path)):
        report["key_map"] = {"path": str(key_map), "sha256": file_sha256(key_map)}
    provenance = {
        "sources": report["sources"],
        "format": report["format"],
        "key_report": {k: report[k] for k in ("loaded", "total", "missing", "unexpected", "shape_mismatched")},
        "dropped": report["dropped"],
        "allow_partial": report["allow_partial"],
        "normalization": report["normalization"]["source"],
        "notes": report["notes"],
    }
    if "key_map" in report:
        provenance["key_map"] = report["key_map"]
    if imported.format == "harness":
        # A re-import keeps what the checkpoint says about its own training.
        src = imported.source_meta
        meta = {k: src[k] for k in src if k not in ("harness_version", "provenance")}
        meta["arch"] = arch
        if override:
            meta["normalization"] = override
    else:
        data = {"dataset": "unknown"}
        if {"height", "width"} <= set(imported.source_meta):
            data["train_size"] = [imported.source_meta["height"], imported.source_meta["width"]]
        meta = {"arch": arch, "method": imported.method, "data": data, "steps": 0,
                "normalization": override or source_norm, "seed": 0}
    meta["decoder"] = imported.decoder_meta if imported.decoder else None
    meta["provenance"] = provenance
    if name is not None:
        meta["name"] = name
    out = save_checkpoint(out_path, _encoder_state(imported, encoder, report), meta, decoder_state=imported.decoder)
    return Path(out), report
