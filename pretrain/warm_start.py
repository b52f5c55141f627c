"""`--init`: start a pre-training from existing weights instead of from scratch.

The paper's "Depth" vs "Depth-Rand" comparison: the same depth training started from ImageNet
weights or from random ones. Accepted files:

- a harness checkpoint (`.safetensors` with depth2seg metadata): its encoder, and its decoder too
  when the method has a decoder of the same kind (the output heads always start fresh);
- a plain state dict of the encoder's architecture, as torchvision and timm save ImageNet
  weights (`.pth`, `.pt`, `.bin`, or a `.safetensors` without harness metadata), optionally
  wrapped in `state_dict` / `model` and prefixed `module.`. Pickled files are read with
  `torch.load(weights_only=True)`; one that needs arbitrary objects is refused, never unpickled.

Every encoder tensor must load (a classifier head in the file is ignored); anything less is a
one-line error.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from bench.core.checkpoint import META_KEY, load_checkpoint, load_encoder_weights
from bench.core.errors import UserError

WRAPPERS = ("state_dict", "model", "model_state_dict")
CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.")  # ImageNet heads: not part of an encoder


def _is_harness(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return META_KEY in (f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise UserError(f"--init {path}: not a readable safetensors file ({exc})") from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A foreign weights file as a flat name → tensor dict, unwrapped and un-prefixed."""
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise UserError(f"--init {path}: not a readable safetensors file ({exc})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 -- any unpickling failure is the same user problem
            raise UserError(f"--init {path}: cannot be read safely with torch.load(weights_only=True) "
                            f"({str(exc).splitlines()[0][:160]}); convert it to a plain state dict") from None
    for key in WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--init {path}: not a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def initialise(task, init) -> dict:
    """Load `init` into the method's encoder (and decoder body); returns the key report."""
    path = Path(init)
    if not path.is_file():
        raise UserError(f"--init {path}: file not found")
    if path.suffix == ".safetensors" and _is_harness(path):
        ckpt = load_checkpoint(path)
        if ckpt.meta["arch"] != task.config["arch"]:
            raise UserError(f"--init {path}: a {ckpt.meta['arch']} checkpoint cannot initialise --arch {task.config['arch']}")
        report = load_encoder_weights(task.encoder, ckpt.encoder, source=f"--init {path}")
        saved, ours = ckpt.meta.get("decoder") or {}, task.decoder_meta() or {}
        if task.decoder is not None and ckpt.decoder and saved.get("kind") == ours.get("kind"):
            report["decoder_loaded"] = task.decoder.load_body(ckpt.decoder)
    else:
        state = read_state_dict(path)
        body = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}
        report = load_encoder_weights(task.encoder, body, source=f"--init {path}")
    task.after_init()
    return report
