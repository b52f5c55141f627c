"""Render training views ahead of the step, in DataLoader workers (cells without a feature cache).

A step's views (image, crop box, flip) are drawn from its (seed, step) generator
(`TrainImages.draw`), so the views of all future steps are known from their step numbers.
`StepViews` yields them (this rank's slice under DDP), a `torch.utils.data.DataLoader` decodes,
resizes, crops and flips them in `num_workers` processes (pinned memory on CUDA, persistent
workers, prefetching), and `StepBatches` takes each batch when its step draws the same views. A
view renders to the same pixels in any process, so a cell gives bit-identical results with 0 or
N workers (tests/test_transfer_loader.py), and a resumed cell starts the sampler at its step.

Drawing a crop box needs the image's size after resizing: `TrainImages.sizes` is filled first by
one pass of the same workers, so the training process never decodes an image itself.
"""

from __future__ import annotations

from torch.utils.data import DataLoader, Dataset, Sampler

from bench.core.errors import UserError
from bench.core.seeding import step_generator
from transfer.data import TrainImages, View, stack_pairs


class _Views(Dataset):
    def __init__(self, images: TrainImages):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, view: View):
        return view, self.images.render(view)


class _Shapes(Dataset):
    def __init__(self, images: TrainImages):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, tuple[int, int]]:
        return index, self.images.items[index][1].shape


class StepViews(Sampler):
    """The views of steps start..steps-1, one list per step (a batch sampler)."""

    def __init__(self, images: TrainImages, seed: int, start: int, steps: int, batch_size: int, rank: int, world: int):
        self.images, self.seed, self.start, self.steps = images, seed, start, steps
        self.batch_size, self.rank, self.world = batch_size, rank, world

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self):
        for step in range(self.start, self.steps):
            yield self.images.draw(step_generator(self.seed, step), self.batch_size)[self.rank::self.world]


def _collate(pairs):
    views = [v for v, _ in pairs]
    shapes = {label.shape for _, (_, label) in pairs}
    if len(shapes) > 1:  # as TrainImages.load says it
        raise UserError(f"training images differ in size after resizing ({sorted(shapes)[:2]}); set a crop or "
                        f"an exact resize HxW")
    return views, *stack_pairs([p for _, p in pairs])


def _first(pairs):
    return pairs


def view_loader(images: TrainImages, *, seed: int, start: int, steps: int, batch_size: int, rank: int, world: int,
                num_workers: int, pin_memory: bool):
    """An iterator of (views, uint8 images, int64 labels) per step, rendered by `num_workers`
    processes; None for 0 workers."""
    if num_workers <= 0 or start >= steps:
        return None
    if images.crop is not None and images.augment:  # crop boxes need sizes: measured by the workers
        for batch in DataLoader(_Shapes(images), batch_size=16, num_workers=num_workers, collate_fn=_first):
            for index, shape in batch:
                images.sizes[index] = tuple(shape)
    images.items.budget_bytes //= num_workers  # each worker keeps its own cache
    loader = DataLoader(_Views(images), batch_sampler=StepViews(images, seed, start, steps, batch_size, rank, world),
                        num_workers=num_workers, collate_fn=_collate, pin_memory=pin_memory,
                        persistent_workers=True, prefetch_factor=2)
    return iter(loader)
