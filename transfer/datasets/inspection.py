"""`bench data inspect`: per-class pixel counts of one official split at native resolution.

Reading every image and label of the split is also the check that the dataset is complete and
readable: the first missing, unreadable or unmappable file stops it with a one-line error.
"""

from __future__ import annotations

import numpy as np

from bench.core.progress import bar
from transfer.datasets.base import SegmentationDataset, read_pair


def inspect_split(dataset: SegmentationDataset, split: str, progress: bool = False) -> dict:
    samples = dataset.samples(split)
    counts = np.zeros(256, dtype=np.int64)
    for sample in bar(enabled=progress, iterable=samples, desc=f"{dataset.name}/{split}", unit="img"):
        _, label = read_pair(dataset, sample)
        counts += np.bincount(label.ravel(), minlength=256)
    k = dataset.num_classes
    return {
        "dataset": dataset.name,
        "split": split,
        "num_images": len(samples),
        "num_classes": k,
        "class_names": list(dataset.class_names),
        "class_pixels": [int(c) for c in counts[:k]],
        "ignore_pixels": int(counts[dataset.ignore_index]),
    }
