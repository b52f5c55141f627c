"""Few-shot training subsets.

A subset depends only on (pool size, train_size, seed), never on the backbone, so every backbone
of a comparison trains on exactly the same images. Indices are drawn uniformly without
replacement -- not the first N images, which in a video dataset are near-duplicates of each other.
"""

from __future__ import annotations

import numpy as np

from bench.errors import UserError


def few_shot_indices(pool_size: int, train_size: int, seed: int) -> list[int]:
    if train_size < 1:
        raise UserError(f"train_size must be at least 1, got {train_size}")
    if train_size > pool_size:
        raise UserError(f"train_size {train_size} exceeds the {pool_size} labelled training images")
    rng = np.random.default_rng([seed, train_size, pool_size])
    return sorted(int(i) for i in rng.choice(pool_size, size=train_size, replace=False))
