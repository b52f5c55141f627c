"""Deterministic per-step randomness shared by pre-training and transfer.

Every step draws its batch and augmentations from a generator seeded by (seed, step): a resumed
run replays exactly what an uninterrupted one would, and two backbones trained with the same
seed see the same batches in the same order.
"""

from __future__ import annotations

import torch


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def flip_batch(gen: torch.Generator, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Flip each sample horizontally with probability 1/2; all tensors flip together."""
    # Drawn on the CPU (the step generator is a CPU generator), applied where the tensors are.
    flip = (torch.rand(tensors[0].shape[0], generator=gen) < 0.5).to(tensors[0].device)
    return tuple(torch.where(flip.view(-1, *[1] * (t.dim() - 1)), t.flip(-1), t) for t in tensors)
