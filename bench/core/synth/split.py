"""The generated world's fixed train/val split, shared by pre-training and transfer.

Held-out sequences are never seen by any pre-training or transfer run, so transfer numbers are
not inflated by pre-training on the evaluation frames.
"""

from __future__ import annotations

from pathlib import Path

from bench.core.errors import UserError


def split_sequences(meta: dict) -> dict[str, list[str]]:
    names = sorted(s["name"] for s in meta["sequences"])
    if len(names) < 2:
        raise UserError("the generated world needs at least 2 sequences (one is held out for evaluation)")
    n_val = max(1, round(0.25 * len(names)))
    return {"train": names[:-n_val], "val": names[-n_val:]}


def frame_ids(root, sequence: str) -> list[str]:
    return sorted(p.stem for p in (Path(root) / sequence / "rgb").glob("*.png"))
