"""Decode and resize pre-training items ahead of the training step, in DataLoader workers.

A step's batch is the first draw of its (seed, step) generator (`pretrain.batches.draw_indices`),
so the batches of all future steps are known from their step numbers. `StepSampler` yields them
(this process's slice under data parallelism), `torch.utils.data.DataLoader` decodes and resizes
their items in `num_workers` processes with pinned memory (on CUDA), persistent workers and
prefetching, and `Batches.draw` takes each batch when its step draws it. Crops and augmentation
stay in the training process, drawn from the step's generator as before, so a run gives
bit-identical checkpoints with 0 or N workers (tests/test_pretrain_loader.py), and a resumed run
starts the sampler at its resume step and lands on the same batches.

Each worker keeps its own item cache of `cache_bytes / num_workers`.
"""

from __future__ import annotations

from torch.utils.data import DataLoader, Dataset, Sampler

from bench.core.seeding import step_generator
from pretrain.batches import Batches, draw_indices


class _Items(Dataset):
    def __init__(self, batches: Batches):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> tuple[int, dict]:
        return index, self.batches.item(index)


class StepSampler(Sampler):
    """The item indices of steps start..steps-1, one list per step (a batch sampler)."""

    def __init__(self, count: int, seed: int, start: int, steps: int, batch_size: int, rank: int = 0, world: int = 1):
        self.count, self.seed, self.start, self.steps = count, seed, start, steps
        self.batch_size, self.rank, self.world = batch_size, rank, world

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self):
        for step in range(self.start, self.steps):
            yield draw_indices(step_generator(self.seed, step), self.count, self.batch_size)[self.rank::self.world]


def _collate(pairs: list[tuple[int, dict]]) -> tuple[list[int], list[dict]]:
    return [i for i, _ in pairs], [item for _, item in pairs]


def attach_loader(batches: Batches, *, seed: int, start: int, steps: int, batch_size: int, num_workers: int,
                  pin_memory: bool) -> DataLoader | None:
    """Have `num_workers` processes load the batches of steps start.. for `batches`; None for 0
    (items are then loaded in the training process, as they are needed)."""
    if num_workers <= 0 or start >= steps:
        return None
    batches.cache_bytes //= num_workers  # each worker holds its own cache
    loader = DataLoader(_Items(batches), batch_sampler=StepSampler(len(batches), seed, start, steps, batch_size,
                                                                   batches.rank, batches.world),
                        num_workers=num_workers, collate_fn=_collate, pin_memory=pin_memory,
                        persistent_workers=True, prefetch_factor=2)
    batches.prefetched = iter(loader)
    return loader


def detach_loader(batches: Batches) -> None:
    """Drop the loader's iterator, which stops its workers."""
    batches.prefetched, batches._ahead = None, None
