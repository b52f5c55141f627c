"""Few-shot training subsets, published as plain lists of file stems.

A subset is the first `train_size` stems of one seeded permutation of the training pool:
- deterministic for (dataset, pool, seed) -- never dependent on the backbone, so every backbone
  of a comparison trains on exactly the same images;
- nested: for one seed the 16-image subset is contained in the 32-image one, so a few-shot curve
  adds images instead of swapping them;
- drawn uniformly, not "the first N files", which in a video dataset are near-duplicates.
Evaluation sets are fixed per dataset (the official validation split, or KITTI's documented
held-out set) and disjoint from every pool.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from bench.core.atomic import write_text_atomic
from bench.core.errors import UserError


def few_shot_stems(pool: list[str], train_size: int, seed: int, dataset: str) -> list[str]:
    if train_size < 1:
        raise UserError(f"train_size must be at least 1, got {train_size}")
    if len(set(pool)) != len(pool):
        raise UserError(f"dataset {dataset}: the training pool repeats stems")
    if train_size > len(pool):
        raise UserError(f"train_size {train_size} exceeds the {len(pool)} labelled training images of {dataset}")
    # crc32, not hash(): Python salts str hashes per process.
    rng = np.random.default_rng([seed, zlib.crc32(dataset.encode())])
    order = rng.permutation(len(pool))
    ordered = sorted(pool)
    return sorted(ordered[i] for i in order[:train_size])


def split_file_name(train_size: int, seed: int) -> str:
    return f"train_n{train_size}_s{seed}.txt"


def write_stems(path: Path, stems: list[str]) -> None:
    write_text_atomic(path, "".join(f"{s}\n" for s in stems))
