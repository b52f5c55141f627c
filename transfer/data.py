"""From dataset samples to tensors: the train and eval geometry every dataset shares.

- `TrainImages`: the few-shot training images, resized once (image bilinear, label nearest) and
  kept in memory; each step draws a batch with a random crop and a horizontal flip from the
  step's generator, so a resumed or repeated cell sees the same batches.
- `EvalImages`: the evaluation set; images resized to the eval size, labels kept at native
  resolution; batches group consecutive images of equal size, and the caller upsamples logits
  to the label's size before scoring.

Decoded images are cached in memory up to `CACHE_BYTES` per set, so a full-size training set
does not exhaust the machine; beyond that, with a `spill_dir` (a cell's `image_cache/`, removed
when the cell ends), the resized arrays go to `.npy` files and are read back instead of being
decoded and resized again on every evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.core import results_folder as rf
from bench.core.errors import UserError
from bench.core.sizes import parse_size, too_small
from transfer.datasets import dataset_class, open_dataset
from transfer.datasets.base import IGNORE_INDEX, VALIDATION_RULE, Resize, Sample, SegmentationDataset, read_pair
from transfer.splits import few_shot_stems, split_file_name, write_stems

CACHE_BYTES = 2 * 1024**3


def _check_side(dataset: SegmentationDataset, size: tuple[int, int], what: str) -> None:
    why = too_small(size)
    if why:
        raise UserError(f"dataset {dataset.name}: {what} images: {why}; set a larger resize or crop")


def target_size(height: int, width: int, resize: Resize) -> tuple[int, int]:
    if resize is None:
        return height, width
    if isinstance(resize, int):  # short side, aspect kept
        scale = resize / min(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))
    return int(resize[0]), int(resize[1])


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if label.shape == tuple(size):
        return label
    return np.asarray(Image.fromarray(label).resize((size[1], size[0]), Image.NEAREST))


class _Cached:
    """Read-and-prepare with a byte-bounded memory cache, and beyond it an optional folder of
    `.npy` files (what does not fit in memory is prepared once, then read back)."""

    def __init__(self, prepare, count: int, cache_bytes: int, spill_dir: Path | None = None):
        self._prepare, self._count, self.budget_bytes = prepare, count, cache_bytes
        self._cache: dict[int, tuple] = {}
        self._used = 0
        self.spill_dir = spill_dir
        self._spilled: dict[int, int] = {}  # index -> number of arrays on disk
        self.stats = {"prepared": 0, "from_disk": 0}

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, i: int) -> tuple:
        if i in self._cache:
            return self._cache[i]
        if i in self._spilled:
            self.stats["from_disk"] += 1
            return tuple(np.load(self._spill_path(i, k)) for k in range(self._spilled[i]))
        item = self._prepare(i)
        self.stats["prepared"] += 1
        size = sum(t.nbytes for t in item)
        if self._used + size <= self.budget_bytes:
            self._cache[i] = item
            self._used += size
        elif self.spill_dir is not None:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            for k, array in enumerate(item):
                np.save(self._spill_path(i, k), np.ascontiguousarray(array))
            self._spilled[i] = len(item)
        return item

    def _spill_path(self, i: int, part: int) -> Path:
        return self.spill_dir / f"{i}.{part}.npy"


@dataclass(frozen=True)
class View:
    """One augmented training view: image `index`, crop at (`top`, `left`) (-1: no crop), and a
    horizontal flip. Views are drawn first and rendered after, so a feature cache can key on them."""
    index: int
    top: int
    left: int
    flip: bool


class TrainImages:
    def __init__(self, dataset: SegmentationDataset, samples: list[Sample], resize: Resize,
                 crop: tuple[int, int] | None, cache_bytes: int = CACHE_BYTES, augment: bool = True):
        if not samples:
            raise UserError(f"dataset {dataset.name}: no training images selected")
        self.dataset, self.samples, self.resize, self.crop = dataset, samples, resize, crop
        # Without augmentation there is no flip; a crop, if set, is the centre crop.
        self.augment = augment
        self.items = _Cached(self._prepare, len(samples), cache_bytes)
        self.sizes: dict[int, tuple[int, int]] = {}  # resized (h, w) per image, once known

    def __len__(self) -> int:
        return len(self.samples)

    def _prepare(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image, label = read_pair(self.dataset, self.samples[i])
        size = target_size(*label.shape, self.resize)
        _check_side(self.dataset, self.crop or size, "training")
        self.sizes[i] = size
        return resize_image(image, size), resize_label(label, size)

    def draw(self, gen: torch.Generator, batch_size: int) -> list[View]:
        """The step's views: images drawn with replacement, then a crop box each, then flips."""
        pick = torch.randint(len(self.items), (batch_size,), generator=gen).tolist()
        boxes = [self._crop_box(gen, i) for i in pick]
        flips = (torch.rand(batch_size, generator=gen) < 0.5).tolist() if self.augment else [False] * batch_size
        return [View(i, top, left, bool(f)) for i, (top, left), f in zip(pick, boxes, flips)]

    def fixed_views(self, index: int, count: int, seed: int) -> list[View]:
        """`count` views of one image, drawn once from its own generator: the finite set of
        augmentations a feature cache can hold when random crops make every step's view new."""
        gen = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * index + 1)
        views = []
        for _ in range(count):
            top, left = self._crop_box(gen, index)
            flip = bool(torch.rand(1, generator=gen) < 0.5) and self.augment
            views.append(View(index, top, left, flip))
        return views

    def _crop_box(self, gen: torch.Generator, i: int) -> tuple[int, int]:
        if self.crop is None:
            return -1, -1
        h, w = self.sizes[i] if i in self.sizes else self.items[i][1].shape
        ch, cw = self.crop
        h, w = max(h, ch), max(w, cw)  # smaller images are padded (see `random_crop`)
        if not self.augment:
            return (h - ch) // 2, (w - cw) // 2
        top = int(torch.randint(h - ch + 1, (1,), generator=gen))
        left = int(torch.randint(w - cw + 1, (1,), generator=gen))
        return top, left

    def render(self, view: View) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.items[view.index]
        if view.top >= 0:
            image, label = _crop(image, label, self.crop, view.top, view.left)
        if view.flip:
            image, label = image[:, ::-1], label[:, ::-1]
        return image, label

    def load(self, views: list[View]) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images B×3×h×w and int64 labels B×h×w of these views."""
        pairs = [self.render(v) for v in views]
        shapes = {lbl.shape for _, lbl in pairs}
        if len(shapes) > 1:
            raise UserError(f"dataset {self.dataset.name}: training images differ in size after resizing "
                            f"({sorted(shapes)[:2]}); set a crop or an exact resize HxW")
        return stack_pairs(pairs)

    def labels(self, views: list[View]) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.render(v)[1] for v in views]).astype(np.int64))

    def batch(self, gen: torch.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images B×3×h×w and int64 labels B×h×w for one step."""
        return self.load(self.draw(gen, batch_size))


def _crop(image: np.ndarray, label: np.ndarray, crop: tuple[int, int], top: int,
          left: int) -> tuple[np.ndarray, np.ndarray]:
    """The crop at (top, left); where the image is smaller it is padded (black image, ignored
    label), so padding never counts as a class."""
    ch, cw = crop
    h, w = label.shape
    if h < ch or w < cw:
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
    return image[top:top + ch, left:left + cw], label[top:top + ch, left:left + cw]


def random_crop(gen: torch.Generator, image: np.ndarray, label: np.ndarray,
                crop: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A crop at a random position (padded where the image is smaller)."""
    ch, cw = crop
    h, w = max(label.shape[0], ch), max(label.shape[1], cw)
    top = int(torch.randint(h - ch + 1, (1,), generator=gen))
    left = int(torch.randint(w - cw + 1, (1,), generator=gen))
    return _crop(image, label, crop, top, left)


class EvalImages:
    def __init__(self, dataset: SegmentationDataset, samples: list[Sample], resize: Resize,
                 cache_bytes: int = CACHE_BYTES, spill_dir: Path | None = None):
        if not samples:
            raise UserError(f"dataset {dataset.name}: the evaluation set is empty")
        self.dataset, self.samples, self.resize = dataset, samples, resize
        self.items = _Cached(self._prepare, len(samples), cache_bytes, spill_dir)

    def _prepare(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image, label = read_pair(self.dataset, self.samples[i])
        size = target_size(*label.shape, self.resize)
        _check_side(self.dataset, size, "evaluation")
        return resize_image(image, size), label

    def batches(self, batch_size: int):
        """Yields (uint8 images B×3×h×w, int64 native labels B×H×W), consecutive images of equal
        size together."""
        for _, images, labels in self.indexed_batches(batch_size):
            yield images, labels

    def load(self, indices: list[int]) -> torch.Tensor:
        """uint8 images B×3×h×w of these evaluation images (equal sizes)."""
        return stack_pairs([self.items[i] for i in indices])[0]

    def indexed_batches(self, batch_size: int):
        """As `batches`, with the images' indices first (the keys of a feature cache)."""
        group: list[tuple[np.ndarray, np.ndarray]] = []
        index: list[int] = []
        for i in range(len(self.items)):
            item = self.items[i]
            if group and (len(group) == batch_size or item[0].shape != group[0][0].shape
                          or item[1].shape != group[0][1].shape):
                yield (index, *stack_pairs(group))
                group, index = [], []
            group.append(item)
            index.append(i)
        if group:
            yield (index, *stack_pairs(group))


def stack_pairs(group) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images B×3×H×W, int64 labels B×H×W) from (H×W×3 image, H×W label) pairs."""
    x = torch.from_numpy(np.stack([img for img, _ in group])).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(np.stack([lbl for _, lbl in group]).astype(np.int64))
    return x, y


def dataset_settings(name: str, *, classes: int | None = None, train_split: str | None = None,
                     eval_split: str | None = None, resize="default", crop="default", eval_resize="default",
                     validation=None) -> dict:
    """The resolved data settings of a transfer cell (JSON-able; part of its fingerprint).

    Geometry not given ("default") takes the dataset's literature defaults; splits left None
    mean the dataset's own training pool and evaluation set. `validation` is the validation
    rule's version, always the current one (accepted so that resolved settings resolve to
    themselves).
    """
    cls = dataset_class(name)
    cls.check_classes(classes)
    defaults = cls.transforms
    as_json = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    return {
        "name": name, "classes": classes, "train_split": train_split, "eval_split": eval_split,
        "validation": VALIDATION_RULE,
        "resize": as_json(defaults.resize if resize == "default" else parse_size(resize, "resize")),
        "crop": as_json(defaults.crop if crop == "default" else parse_size(crop, "crop", allow_short_side=False)),
        "eval_resize": as_json(defaults.eval_resize if eval_resize == "default"
                               else parse_size(eval_resize, "eval_resize")),
    }


def open_transfer_data(settings: dict, root, train_size: int, seed: int, augment: bool = True,
                       spill_dir: Path | None = None, cache_bytes: int = CACHE_BYTES
                       ) -> tuple[SegmentationDataset, list[str], TrainImages, EvalImages, EvalImages]:
    """(dataset, few-shot stems, training images, validation images, evaluation images) of one
    cell; evaluation-side images beyond `cache_bytes` go to `spill_dir` (if given)."""
    dataset, pool, validation, evaluation = open_pools(settings, root)
    stems = few_shot_stems([s.stem for s in pool], train_size, seed, dataset.name)
    by_stem = {s.stem: s for s in pool}
    train = TrainImages(dataset, [by_stem[s] for s in stems], as_size(settings["resize"]), as_size(settings["crop"]),
                        augment=augment)
    eval_size = as_size(settings["eval_resize"])
    spill = (lambda name: spill_dir / name) if spill_dir is not None else (lambda name: None)  # noqa: E731
    return (dataset, stems, train, EvalImages(dataset, validation, eval_size, cache_bytes, spill("validation")),
            EvalImages(dataset, evaluation, eval_size, cache_bytes, spill("evaluation")))


def open_pools(settings: dict, root) -> tuple[SegmentationDataset, list[Sample], list[Sample], list[Sample]]:
    """(dataset, training pool, validation set, evaluation set) as the resolved data settings
    select them; the pool excludes the validation set."""
    dataset = open_dataset(settings["name"], root, classes=settings.get("classes"))
    pool, validation, evaluation = dataset.transfer_sets(settings.get("train_split"), settings.get("eval_split"))
    return dataset, pool, validation, evaluation


def as_size(value):
    """A size from the JSON settings (lists) back to the `Resize` form (tuples)."""
    return tuple(value) if isinstance(value, list) else value


def publish_splits(settings: dict, root, train_sizes: list[int], seeds: list[int], out_dir: Path,
                   name: str | None = None) -> Path:
    """Write `OUT/splits/<name>/eval.txt`, `validation.txt` and `train_n<N>_s<S>.txt` (one stem
    per line): the exact images of every few-shot subset of a matrix, and the held-out sets, ready
    to publish with its results. Also checks, before any cell runs, that every requested size fits
    in the training pool. `name` is the manifest entry's display name (a variant's `NAME@LABEL`,
    whose splits or data may differ); default: the dataset's name."""
    dataset, pool, validation, evaluation = open_pools(settings, root)
    folder = Path(out_dir) / rf.SPLITS / (name or dataset.name)
    write_stems(folder / "eval.txt", [s.stem for s in evaluation])
    write_stems(folder / "validation.txt", [s.stem for s in validation])
    for n in train_sizes:
        for seed in seeds:
            write_stems(folder / split_file_name(n, seed), few_shot_stems([s.stem for s in pool], n, seed, dataset.name))
    return folder
