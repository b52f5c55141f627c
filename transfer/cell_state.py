"""Resumable in-cell state: a killed or preempted cell restarts from its last state, not step 0.

Every `state_every` steps the trainer writes `OUT/state.pt` (atomically): the step, the model
and optimiser states (of every candidate trained together), the RNG states and the progress so
far (validation curves, candidates' status), under the cell's config
fingerprint. A restarted cell with the same fingerprint loads it and continues; batches come from
(seed, step) generators and the RNGs are restored, so it ends with the record an uninterrupted
run would have written (the same metrics; only the timings differ). The record replaces the
state when the cell ends. A state written for another config is ignored.

The file holds tensors and plain Python values only and is read with `weights_only=True`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.core.atomic import atomic_path

STATE_NAME = "state.pt"


def save_cell_state(path: Path, fingerprint: str, step: int, model, optimizer, curve: list) -> None:
    state = {
        "fingerprint": fingerprint, "step": step, "curve": curve,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_cell_state(path: Path, fingerprint: str, model, optimizer) -> dict | None:
    """Restore `model` and `optimizer` from `path` when it belongs to this config; the state's
    `step` and `curve`, or None (no state, another config, or an unreadable file: start over)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 -- a torn or foreign file only costs the steps since the last state
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        return None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return {"step": int(state["step"]), "curve": state["curve"]}
