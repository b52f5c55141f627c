"""Segmentation datasets for transfer.

Each loader returns a `SegmentationData` with uint8 images (N×3×H×W), label maps of train ids
(N×H×W, `ignore_index` for void), class names and a palette. The generated world (`synth`) is
the embedded default; real datasets in their official layouts register here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.errors import UserError
from bench.synth import load_meta
from bench.synth.split import frame_ids, split_sequences


@dataclass
class SegmentationData:
    name: str
    class_names: list[str]
    palette: list[list[int]]
    ignore_index: int
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _load_frames(root: Path, sequences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for seq in sequences:
        for fid in frame_ids(root, seq):
            label_path = root / seq / "label" / f"{fid}.png"
            if not label_path.is_file():
                raise UserError(f"{label_path}: missing label for image {seq}/rgb/{fid}.png")
            images.append(np.asarray(Image.open(root / seq / "rgb" / f"{fid}.png").convert("RGB")))
            labels.append(np.asarray(Image.open(label_path)))
    if not images:
        raise UserError(f"{root}: sequences {sequences} hold no frames")
    return (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(np.stack(labels).astype(np.int64)))


def load_synth(root) -> SegmentationData:
    root = Path(root)
    meta = load_meta(root)
    split = split_sequences(meta)
    train_images, train_labels = _load_frames(root, split["train"])
    val_images, val_labels = _load_frames(root, split["val"])
    return SegmentationData("synth", list(meta["classes"]), meta["palette"], int(meta["ignore_index"]),
                            train_images, train_labels, val_images, val_labels)


DATASETS = {"synth": load_synth}


def load_dataset(name: str, root) -> SegmentationData:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](root)
