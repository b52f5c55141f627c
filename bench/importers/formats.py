"""Foreign checkpoint formats: find the encoder (and a monodepth2 decoder) in a weights file.

`read_foreign(path, arch, fmt="auto", key_map=None)` returns an `Imported`: the encoder's tensors
named as the harness encoder of `arch` names them (timm's names, which for ResNets are
torchvision's), the decoder in the harness `UNetDecoder` naming when the source has a monodepth2
DepthDecoder, the format's name, and every source tensor it left out with the reason.

Formats (`fmt`), and how `auto` recognises each (first rule that fits wins):

| format | stored as | auto-detected by |
|---|---|---|
| harness | harness `.safetensors` | the `depth2seg` metadata block |
| monodepth2 | folder: `encoder.pth` (ResnetEncoder: `encoder.*` + height/width/use_stereo) and `depth.pth` (DepthDecoder) | the file names; or `encoder.*` tensors next to `height`/`width` values |
| nimbled | folder: `depth_encoder.pth` + `depth_decoder.pth` (monodepth2 layout; camera_* ignored) | the file names; or bare `encoder.*` tensors |
| depthtosemantic | `encoder-<step>.pth` (+ `decoder-<step>.pth`), weights under `model_state_dict` | the file name; or `encoder.*` tensors under `model_state_dict` |
| moco | `state_dict` with `module.encoder_q.*` (v3: `module.base_encoder.*`) | those prefixes |
| dino | `teacher`/`student` entries, `backbone.*` / `module.backbone.*`, or a DINOv2 hub state dict | those entries/prefixes with a DINO head, or `mask_token` next to `blocks.*` |
| mae | `model` with the encoder plus `decoder_*` and `mask_token` | `decoder_embed`/`decoder_blocks`/`decoder_pred` tensors |
| depth_anything | `pretrained.*` (the DINOv2 encoder) + `depth_head.*` | the `pretrained.` prefix |
| torchvision | a plain state dict; torchvision ViTs (`conv_proj`, `encoder.layers.*`) are renamed to timm's | `class_token`/`conv_proj`, or a ResNet with `conv1.weight` and `fc.weight` |
| timm | a plain state dict, optionally `module.`-prefixed | anything else |

Wrappers (`state_dict`, `model`, `model_state_dict`, `teacher`, ...) are opened first; then the
user's key map (`keymap.py`) runs; then the format's prefix is stripped and its non-encoder parts
(classifier heads, projection heads, momentum encoders, MAE's decoder, mask tokens, DPT heads)
are dropped, each with a reason in `notes`. A decoder that is not monodepth2's (Depth Anything's
DPT head, MAE's transformer decoder) is always dropped: it does not fit any harness decoder.
Plain ViT hub files (DINO v1, MAE's encoder-only release) are indistinguishable from timm state
dicts and are detected as `timm`; name the format to record the right method.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.core.checkpoint import META_KEY, load_checkpoint
from bench.core.errors import UserError
from bench.core.registry import Registry
from bench.importers.keymap import apply_key_map, load_key_map
from bench.importers.monodepth2 import convert_depth_decoder, decoder_prefix
from bench.importers.safe_load import json_safe, load_file, safetensors_metadata, unwrap


@dataclass
class Imported:
    encoder: dict[str, torch.Tensor]
    decoder: dict[str, torch.Tensor] | None
    format: str
    dropped: list[str] = field(default_factory=list)  # source tensor names deliberately left out
    notes: list[str] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)
    decoder_meta: dict | None = None  # the checkpoint's meta["decoder"] when `decoder` is set
    source_meta: dict = field(default_factory=dict)  # what the source says about itself

    @property
    def method(self) -> str:
        return f"imported:{self.format}"


@dataclass(frozen=True)
class Layout:
    """Where a format keeps its encoder inside a flat state dict."""

    prefixes: tuple[str, ...]  # candidates in order of preference; the first that names a tensor wins
    inside: tuple[tuple[str, str], ...] = ()  # (pattern on the stripped name, why it is not the encoder)
    outside: tuple[tuple[str, str], ...] = ()  # (pattern on the full name, what it is)
    decoder: bool = False  # a monodepth2 DepthDecoder may sit among the other tensors
    activation: str = "sigmoid"  # of that decoder's outputs (NimbleD replaced it with ReLU)
    description: str = ""  # one line for `bench list formats`
    # The input normalisation the source project trains and runs its encoder with (a name of
    # bench.core.models.backbones.NORMALIZATIONS); None: the arch's own (ImageNet statistics).
    normalization: str | None = None


_CLASSIFIER = ((r"^fc\.", "ImageNet classifier"), (r"^heads?\.", "classifier head"),
               (r"^head_dist\.", "distillation head"), (r"^classifier\.", "classifier head"))
_MASK_TOKEN = (r"^mask_token$", "mask token (used only by masked-image training)")
_RESNET_FC = ((r"^fc\.", "ImageNet classifier (unused by the depth network)"),)

LAYOUTS: dict[str, Layout] = {
    "torchvision": Layout(("module.", ""), _CLASSIFIER,
                          description="a torchvision state dict (ViTs renamed to timm's keys)"),
    "timm": Layout(("module.", ""), _CLASSIFIER, description="a timm state dict, optionally module.-prefixed"),
    "monodepth2": Layout(("module.encoder.", "encoder."), _RESNET_FC, decoder=True, normalization="monodepth2",
                         description="a monodepth2 folder (encoder.pth + depth.pth): encoder and depth decoder"),
    "depthtosemantic": Layout(("module.encoder.", "encoder.", "module."), _RESNET_FC, decoder=True,
                              normalization="monodepth2",
                              description="Lao et al.'s DepthToSemantic encoder-<step>.pth (+ decoder-<step>.pth)"),
    "nimbled": Layout(("module.encoder.", "encoder.", "module."), _RESNET_FC, decoder=True, activation="relu",
                      normalization="monodepth2",
                      description="a NimbleD folder (depth_encoder.pth + depth_decoder.pth)"),
    "moco": Layout(
        ("module.encoder_q.", "encoder_q.", "module.base_encoder.", "base_encoder."),
        ((r"^fc\.", "MoCo projection MLP"), (r"^head\.", "MoCo v3 projection head")),
        ((r"(^|\.)encoder_k\.", "MoCo momentum (key) encoder"), (r"(^|\.)momentum_encoder\.", "MoCo momentum encoder"),
         (r"(^|\.)queue(_ptr)?$", "MoCo queue of negatives"), (r"(^|\.)predictor\.", "MoCo v3 predictor")),
        description="a MoCo v2/v3 checkpoint: the query encoder"),
    "dino": Layout(
        ("teacher.backbone.", "module.teacher.backbone.", "backbone.", "module.backbone.",
         "student.backbone.", "module.student.backbone.", ""),
        ((r"^head\.", "DINO projection head"), (r"^(dino|ibot)_head\.", "DINO/iBOT projection head"), _MASK_TOKEN),
        ((r"(^|\.)student\.", "DINO student (the teacher is kept)"),
         (r"(^|\.)(head|dino_head|ibot_head)\.", "DINO/iBOT projection head")),
        description="a DINO/DINOv2 checkpoint or hub state dict: the teacher backbone"),
    "mae": Layout(("module.", ""), ((r"^decoder_", "MAE pixel decoder"), _MASK_TOKEN, *_CLASSIFIER),
                  description="an MAE checkpoint: the encoder, its pixel decoder dropped"),
    "depth_anything": Layout(
        ("module.pretrained.", "pretrained."), (_MASK_TOKEN,),
        ((r"(^|\.)depth_head\.", "Depth Anything DPT head (fits no harness decoder)"),),
        description="a Depth Anything checkpoint: its DINOv2 encoder (the DPT head is dropped)"),
}
HARNESS = Layout((), description="a harness .safetensors checkpoint (depth2seg metadata)")

# Every format on the harness registry (`bench list formats`); FORMATS keeps the table's order.
IMPORT_FORMATS: Registry[Layout] = Registry("checkpoint format")
for _name, _layout in {"harness": HARNESS, **LAYOUTS}.items():
    IMPORT_FORMATS.register_as(_name)(_layout)
FORMATS = tuple(name for name, _ in IMPORT_FORMATS.items())

# torchvision's ViT names -> timm's (same tensors: fused qkv in q, k, v order, eps 1e-6 LayerNorms).
_TV_VIT = (
    (r"^class_token$", "cls_token"), (r"^conv_proj\.", "patch_embed.proj."), (r"^encoder\.pos_embedding$", "pos_embed"),
    (r"^encoder\.ln\.", "norm."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_1\.", r"blocks.\1.norm1."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_2\.", r"blocks.\1.norm2."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_(weight|bias)$", r"blocks.\1.attn.qkv.\2"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.(0|linear_1)\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.(3|linear_2)\.", r"blocks.\1.mlp.fc2."),
)

# Folder layouts: (encoder file, decoder file, files of other networks that are ignored)
_FOLDERS = {
    "monodepth2": ("encoder.pth", "depth.pth", ("pose_encoder.pth", "pose.pth", "adam.pth")),
    "nimbled": ("depth_encoder.pth", "depth_decoder.pth", ("camera_encoder.pth", "camera_decoder.pth")),
}
_D2S_FILE = re.compile(r"^encoder-(\d+)\.pth$")


def _has(keys, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def detect_format(state: dict, values: dict, opened: list[str]) -> tuple[str, str]:
    """(format, the evidence) for a single file's unwrapped tensors; see the module table."""
    keys = list(state)
    if opened and opened[0] in ("teacher", "student"):
        return "dino", f"its weights are the '{opened[0]}' entry"
    dino_head = any(re.search(r"(^|\.)(head|dino_head|ibot_head)\.", k) for k in keys)
    for p in ("teacher.backbone.", "module.teacher.backbone.", "student.backbone.", "module.student.backbone."):
        if _has(keys, p):
            return "dino", f"tensors under '{p}'"
    for p in ("backbone.", "module.backbone."):
        if _has(keys, p) and dino_head:
            return "dino", f"tensors under '{p}' next to a DINO head"
    for p in ("module.encoder_q.", "encoder_q.", "module.base_encoder.", "base_encoder."):
        if _has(keys, p):
            return "moco", f"tensors under '{p}'"
    for p in ("pretrained.", "module.pretrained."):
        if _has(keys, p):
            return "depth_anything", f"tensors under '{p}'"
    for p in ("decoder_embed.", "decoder_blocks.", "decoder_pred.", "module.decoder_embed."):
        if _has(keys, p):
            return "mae", f"MAE decoder tensors ('{p}*')"
    if "mask_token" in keys and _has(keys, "blocks."):
        return "dino", "a DINOv2 hub state dict (mask_token next to blocks.*)"
    if "class_token" in keys or _has(keys, "conv_proj."):
        return "torchvision", "torchvision ViT names (class_token, conv_proj)"
    for p in ("module.encoder.", "encoder."):
        if _has(keys, p):
            if {"height", "width"} <= set(values):
                return "monodepth2", f"'{p}*' tensors next to height/width values (monodepth2's encoder.pth)"
            if "model_state_dict" in opened:
                return "depthtosemantic", f"'{p}*' tensors under 'model_state_dict'"
            return "nimbled", f"bare '{p}*' tensors (a ResnetEncoder state dict)"
    if decoder_prefix(keys) is not None:
        raise UserError("holds only a monodepth2 depth decoder; pass the folder (or file) with its encoder")
    plain = {k[len("module."):] if k.startswith("module.") else k for k in keys}
    if {"conv1.weight", "fc.weight"} <= plain:
        return "torchvision", "a torchvision ResNet state dict (conv1, fc)"
    return "timm", "a plain state dict"


def _reason(rules, name: str) -> str | None:
    return next((why for pattern, why in rules if re.search(pattern, name)), None)


def _split(state: dict, layout: Layout, source) -> tuple[dict, dict[str, str], str]:
    """(encoder tensors, {dropped name: reason}, the prefix used)."""
    prefix = next((p for p in layout.prefixes if _has(state, p)), None)
    if prefix is None:
        raise UserError(f"{source}: no tensor names start with {' or '.join(map(repr, layout.prefixes))}, "
                        f"where this format keeps its encoder; check --format, or add a --key-map")
    encoder, dropped = {}, {}
    for name, tensor in state.items():
        if name.startswith(prefix):
            short = name[len(prefix):]
            why = _reason(layout.inside, short)
            if why:
                dropped[name] = why
            else:
                encoder[short] = tensor
        else:
            dropped[name] = _reason(layout.outside, name) or f"not under '{prefix}', where the encoder is"
    return encoder, dropped, prefix


def _rename(state: dict, rules, source) -> dict:
    out = {}
    for name, tensor in state.items():
        new = name
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        if new in out:
            raise UserError(f"{source}: two tensors map to {new!r}")
        out[new] = tensor
    return out


def _group_notes(dropped: dict[str, str]) -> list[str]:
    by_reason: dict[str, list[str]] = {}
    for name, why in dropped.items():
        by_reason.setdefault(why, []).append(name)
    notes = []
    for why, names in by_reason.items():
        examples = ", ".join(names[:2]) + (", ..." if len(names) > 2 else "")
        notes.append(f"dropped {len(names)} tensor{'s' * (len(names) > 1)} ({examples}): {why}")
    return notes


@dataclass
class _Source:
    """The files one import reads: the encoder's, and a separate decoder file where the layout has one."""

    fmt: str | None  # the format the folder layout implies, None for a single file
    encoder: Path
    decoder: Path | None = None
    notes: list[str] = field(default_factory=list)


def _resolve(path: Path, fmt: str) -> _Source:
    folder = path if path.is_dir() else path.parent
    for name, (enc, dec, others) in _FOLDERS.items():
        if fmt not in ("auto", name) or not (path.is_dir() or path.name in (enc, dec)):
            continue
        if not (folder / enc).is_file():
            if path.is_dir():
                continue
            raise UserError(f"{path}: a {name} decoder file; its folder lacks {enc}, the encoder")
        src = _Source(name, folder / enc, folder / dec if (folder / dec).is_file() else None)
        if src.decoder is None:
            src.notes.append(f"{folder}: no {dec}; encoder only")
        present = [o for o in others if (folder / o).is_file()]
        if present:
            src.notes.append(f"ignored {', '.join(present)} (not the depth network)")
        return src
    if fmt in ("auto", "depthtosemantic"):
        candidates = [path] if _D2S_FILE.match(path.name) else (
            sorted(p for p in path.iterdir() if _D2S_FILE.match(p.name)) if path.is_dir() else [])
        if len(candidates) > 1:
            raise UserError(f"{path}: {len(candidates)} encoder-<step>.pth files "
                            f"({', '.join(p.name for p in candidates[:4])}); pass the one to import")
        if candidates:
            enc = candidates[0]
            dec = enc.with_name(f"decoder-{_D2S_FILE.match(enc.name).group(1)}.pth")
            return _Source("depthtosemantic", enc, dec if dec.is_file() else None)
    if path.is_dir() and (path / "config.json").is_file():
        raise UserError(f"{path}: a Hugging Face model folder, which import does not read; pass the project's "
                        f"original weights file (e.g. Depth Anything's depth_anything_v2_vits.pth, DINOv2's hub .pth)")
    if path.is_dir():
        raise UserError(f"{path}: a folder, but not a monodepth2 (encoder.pth + depth.pth), NimbleD (depth_encoder.pth "
                        f"+ depth_decoder.pth) or DepthToSemantic (encoder-<step>.pth) folder; pass a weights file")
    return _Source(None, path)


def _read_state(path: Path, rules, dropped: dict[str, str]) -> tuple[dict, dict, list[str], list[str]]:
    state, values, opened, notes = unwrap(load_file(path), path)
    if rules:
        state, gone = apply_key_map(state, rules, path)
        dropped.update({name: "dropped by --key-map" for name in gone})
    return state, values, opened, notes


def _decoder_from(state: dict, layout: Layout, source, *, strict: bool):
    """(decoder in harness naming, meta, source names used) of a monodepth2 DepthDecoder, if any."""
    prefix = decoder_prefix(state)
    if prefix is None:
        if strict:
            raise UserError(f"{source}: no monodepth2 DepthDecoder tensors (decoder.0.conv.conv.weight ...)")
        return None, None, []
    try:
        decoder, scales, used = convert_depth_decoder(state, prefix)
    except ValueError as exc:
        if strict:
            raise UserError(f"{source}: not monodepth2's DepthDecoder layout ({exc})") from None
        return None, {"unmapped": str(exc)}, []
    out_channels = int(decoder[f"heads.{scales[0]}.1.weight"].shape[0]) if scales else 1
    meta = {"kind": "monodepth2", "out_channels": out_channels, "scales": scales,
            "activation": layout.activation, "output": "disparity", "imported_from": "monodepth2 DepthDecoder"}
    return decoder, meta, used


def read_foreign(path, arch: str, fmt: str = "auto", key_map=None) -> Imported:
    """The encoder (and monodepth2 decoder) of a foreign checkpoint, in harness naming.

    `arch` is checked against a harness checkpoint's own; whether the tensors fit it is
    `validate`'s job. Bad inputs raise `UserError` with one line naming the file."""
    path = Path(path)
    if fmt not in ("auto", *FORMATS):
        raise UserError(f"unknown checkpoint format {fmt!r}; available: auto, {', '.join(FORMATS)}")
    if not path.exists():
        raise UserError(f"{path}: not found")
    rules = load_key_map(key_map) if key_map is not None else []
    if path.is_file():
        meta = safetensors_metadata(path)
        if meta is not None and META_KEY in meta:
            if fmt not in ("auto", "harness"):
                raise UserError(f"{path}: a harness checkpoint, not {fmt}; use --format harness (or auto)")
            return _read_harness(path, arch, rules)
        if fmt == "harness":
            raise UserError(f"{path}: no depth2seg metadata; not a harness checkpoint (try --format auto)")

    src = _resolve(path, fmt)
    dropped: dict[str, str] = {}
    state, values, opened, notes = _read_state(src.encoder, rules, dropped)
    notes = src.notes + notes
    if fmt == "auto":
        if src.fmt:
            fmt, why = src.fmt, f"its file layout ({src.encoder.name})"
        else:
            try:
                fmt, why = detect_format(state, values, opened)
            except UserError as exc:
                raise UserError(f"{src.encoder}: {exc}") from None
        notes.insert(0, f"format {fmt}: {why}")
    layout = IMPORT_FORMATS.get(fmt)
    encoder, more, prefix = _split(state, layout, src.encoder)
    dropped.update(more)
    if fmt == "torchvision" and ("class_token" in encoder or _has(encoder, "conv_proj.")):
        encoder = _rename(encoder, _TV_VIT, src.encoder)
        notes.append("renamed torchvision ViT tensors to timm's names")
    if fmt == "dino" and any(re.match(r"^blocks\.\d+\.\d+\.", k) for k in encoder):
        # DINOv2 training checkpoints group blocks in chunks (blocks.<chunk>.<index>.*); the index is global.
        encoder = _rename(encoder, ((r"^blocks\.\d+\.(\d+)\.", r"blocks.\1."),), src.encoder)
        notes.append("flattened DINOv2 chunked blocks (blocks.C.I.* -> blocks.I.*)")
    if not encoder:
        raise UserError(f"{src.encoder}: no encoder tensors left under '{prefix}' after the format's drops")

    decoder = decoder_meta = None
    sources = [src.encoder]
    if layout.decoder:
        if src.decoder is not None:
            dec_state, _, _, _ = _read_state(src.decoder, rules, dropped)
            sources.append(src.decoder)
            decoder, decoder_meta, used = _decoder_from(dec_state, layout, src.decoder, strict=fmt == "monodepth2")
            why = "not part of the DepthDecoder" if decoder is not None else "a decoder not in monodepth2's layout"
            leftover = {k: why for k in dec_state if k not in set(used)}
        else:
            decoder, decoder_meta, used = _decoder_from(
                {k: state[k] for k in dropped if k in state}, layout, src.encoder, strict=False)
            leftover = {}
            for name in used:
                dropped.pop(name, None)
        if decoder is None and decoder_meta is not None:
            notes.append(f"dropped the decoder: {decoder_meta['unmapped']}")
            decoder_meta = None
        dropped.update({f"{src.decoder.name}:{k}": why for k, why in leftover.items()})
    notes += _group_notes(dropped)
    return Imported(encoder=encoder, decoder=decoder, format=fmt, dropped=sorted(dropped), notes=notes,
                    sources=sources, decoder_meta=decoder_meta, source_meta=json_safe(values))


def _read_harness(path: Path, arch: str, rules) -> Imported:
    ckpt = load_checkpoint(path)
    if ckpt.meta.get("arch") != arch:
        theirs = ckpt.meta.get("arch")
        raise UserError(f"{path}: a {theirs} checkpoint, not {arch}; pass --arch {theirs}")
    encoder, dropped = ckpt.encoder, []
    if rules:
        encoder, dropped = apply_key_map(encoder, rules, path)
    return Imported(encoder=encoder, decoder=ckpt.decoder, format="harness", dropped=dropped,
                    notes=["format harness: depth2seg metadata"], sources=[path],
                    decoder_meta=ckpt.meta.get("decoder") if ckpt.decoder else None, source_meta=ckpt.meta)
