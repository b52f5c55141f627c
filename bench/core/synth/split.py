"""The generated world's fixed train/eval split, shared by pre-training and transfer.

The evaluation sequences (the last quarter) are never seen by any pre-training or transfer run,
so transfer numbers are not inflated by pre-training on the evaluation frames. The transfer
stage holds whole `train` sequences out as its validation split (transfer/datasets/base.py).
"""

from __future__ import annotations

from pathlib import Path

from bench.core.errors import UserError


def split_sequences(meta: dict) -> dict[str, list[str]]:
    names = sorted(s["name"] for s in meta["sequences"])
    if len(names) < 2:
        raise UserError("the generated world needs at least 2 sequences (one is held out for evaluation)")
    n_eval = max(1, round(0.25 * len(names)))
    return {"train": names[:-n_eval], "eval": names[-n_eval:]}


def frame_ids(root, sequence: str) -> list[str]:
    return sorted(p.stem for p in (Path(root) / sequence / "rgb").glob("*.png"))
