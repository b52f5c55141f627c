"""The checkpoint format: one safetensors file per pre-trained model.

Tensors live under `encoder.` and (optionally) `decoder.` prefixes; a JSON metadata block under
the safetensors metadata key `depth2seg` records arch, method, data, steps, input normalisation,
seed, harness version and the decoder's kind. Files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from bench.core.version import __version__
from bench.core.atomic import atomic_path
from bench.core.errors import UserError

META_KEY = "depth2seg"
REQUIRED_META = ("arch", "method", "data", "steps", "normalization", "seed", "harness_version")


@dataclass
class Checkpoint:
    encoder: dict[str, torch.Tensor]
    decoder: dict[str, torch.Tensor] | None
    meta: dict
    path: Path | None = None


def _plain(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; copies are cheap at save time.
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def save_checkpoint(path, encoder_state, meta: dict, decoder_state=None) -> Path:
    path = Path(path)
    meta = {"harness_version": __version__, **meta}
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {missing}")
    tensors = {f"encoder.{k}": v for k, v in _plain(encoder_state).items()}
    if decoder_state is not None:
        tensors.update({f"decoder.{k}": v for k, v in _plain(decoder_state).items()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    return path


def _open(path: Path, read_tensors: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    """The metadata block, and the tensors when asked for, with one-line errors for bad files."""
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()} if read_tensors else {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    if raw_meta is None:
        raise UserError(f"{path}: no depth2seg metadata; this is not a harness checkpoint")
    return json.loads(raw_meta), tensors


def read_checkpoint_meta(path) -> dict:
    """The metadata block alone: reads the file's header, not its tensors."""
    return _open(Path(path), read_tensors=False)[0]


def load_checkpoint(path) -> Checkpoint:
    path = Path(path)
    meta, tensors = _open(path, read_tensors=True)
    tensors = as_float32(tensors, meta)
    encoder = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
    decoder = {k[len("decoder."):]: v for k, v in tensors.items() if k.startswith("decoder.")}
    if not encoder:
        raise UserError(f"{path}: no tensors under the 'encoder.' prefix")
    return Checkpoint(encoder=encoder, decoder=decoder or None, meta=meta, path=path)


# A file whose floating tensors were stored in half precision (a cell's kept weights,
# bench.core.kept_weights) says so under this metadata key; they are read back as float32.
STORED_PRECISION = "stored_precision"


def as_float32(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, torch.Tensor]:
    """`tensors` as computed with: float16/bfloat16 back to float32 where the metadata says the
    file stores half precision (integer tensors, e.g. BatchNorm counters, stay as they are)."""
    if meta.get(STORED_PRECISION) != "half":
        return tensors
    return {k: v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for k, v in tensors.items()}


def load_encoder_weights(encoder: torch.nn.Module, state: dict, *, allow_partial=False, source="") -> dict:
    """Load `state` into `encoder` and report key coverage; anything short of full is an error
    unless `allow_partial`."""
    own = encoder.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    loadable = {k: v for k, v in state.items() if k in own and k not in mismatched}
    report = {
        "loaded": len(loadable),
        "total": len(own),
        "missing": sorted(set(own) - set(loadable) - set(mismatched)),
        "unexpected": sorted(set(state) - set(own)),
        "shape_mismatched": sorted(mismatched),
    }
    if report["loaded"] < report["total"] and not allow_partial:
        first = (report["missing"] + report["shape_mismatched"])[:3]
        raise UserError(
            f"{source or 'checkpoint'}: loads {report['loaded']}/{report['total']} encoder tensors "
            f"(e.g. {', '.join(first)}); pass allow_partial to accept a partial load"
        )
    encoder.load_state_dict(loadable, strict=False)
    return report


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """Digest of tensor names, dtypes, shapes and bytes: equal iff the tensors are bit-identical."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous().reshape(-1)  # 0-d tensors (BN counters) too
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy())  # the tensor's own buffer, not a copy of it
    return h.hexdigest()


def load_all_but(module, state: dict, fresh_prefix: str) -> int:
    """Load every tensor of `state` into `module` except those under `fresh_prefix` (an output
    layer that stays freshly initialised); how many loaded -- 0, loading nothing, when the
    names or shapes of the rest differ from the module's."""
    body = {k: v for k, v in state.items() if not k.startswith(fresh_prefix)}
    own = {k: v for k, v in module.state_dict().items() if not k.startswith(fresh_prefix)}
    if set(body) != set(own) or any(own[k].shape != v.shape for k, v in body.items()):
        return 0
    module.load_state_dict(body, strict=False)
    return len(body)
