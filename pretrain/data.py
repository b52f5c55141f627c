"""Pre-training data read from the generated world: frames with depth, and object crops."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.errors import UserError
from bench.synth import load_meta
from bench.synth.split import frame_ids, split_sequences


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def load_depth_frames(root) -> dict:
    """Training-sequence frames: images uint8 N×3×H×W, depth float32 N×H×W, and max depth."""
    root = Path(root)
    meta = load_meta(root)
    images, depths = [], []
    for seq in split_sequences(meta)["train"]:
        for fid in frame_ids(root, seq):
            images.append(_rgb(root / seq / "rgb" / f"{fid}.png"))
            depths.append(np.load(root / seq / "depth" / f"{fid}.npy"))
    if not images:
        raise UserError(f"{root}: the training sequences hold no frames")
    return {
        "images": torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
        "depth": torch.from_numpy(np.stack(depths).astype(np.float32)),
        "max_depth": float(meta["max_depth"]),
    }


def load_crops(root) -> dict:
    """The object-centric crop set (the ImageNet stand-in): images uint8 N×3×S×S and labels."""
    root = Path(root)
    meta = load_meta(root)
    index = root / "crops" / "index.csv"
    if not index.is_file():
        raise UserError(f"{index}: missing; regenerate the world with `bench data synth`")
    images, labels = [], []
    with open(index, newline="") as f:
        for row in csv.DictReader(f):
            images.append(_rgb(root / "crops" / row["path"]))
            labels.append(int(row["label"]))
    if not images:
        raise UserError(f"{index}: lists no crops")
    return {
        "images": torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "num_classes": len(meta["classes"]),
    }
