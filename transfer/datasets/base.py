"""What every segmentation dataset provides, and the readers they share.

A dataset object is bound to a root folder. It lists the samples of each official split
(`samples(split)`, sorted by stem, every image paired with its label) and reads one sample at
native resolution: `read_image` gives H×W×3 uint8 RGB, `read_label` gives H×W uint8 *train ids*
after the official label mapping, with `IGNORE_INDEX` (255) for everything that is not scored.
Resizing, cropping and batching live in `transfer.data`, so every dataset is read the same way.

Every problem with the files on disk -- a missing folder, an image without its label, an
unreadable file, a label value the official mapping does not know -- is a `UserError` whose
one-line message names the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from bench.core.errors import UserError
from bench.core.registry import Registry

IGNORE_INDEX = 255

# A resize is (H, W) exactly, an int for "short side to this many pixels, keep the aspect
# ratio", or None for native resolution.
Resize = tuple[int, int] | int | None


@dataclass(frozen=True)
class Sample:
    """One labelled image. `image` and `label` locate it (paths, or indices into a file)."""

    stem: str
    image: Any
    label: Any


@dataclass(frozen=True)
class Transforms:
    """Default train/eval geometry of a dataset (the literature's settings; overridable).

    Training: resize, then a random `crop` (padded with ignore where the image is smaller) and a
    horizontal flip. Evaluation: resize the image to `eval_resize`, predict, and upsample the
    logits to the label's native size, so metrics are computed on the original annotation as
    MMSegmentation does. Labels are only ever resized by nearest neighbour.
    """

    resize: Resize = None
    crop: tuple[int, int] | None = None
    eval_resize: Resize = None


class LabelMapping:
    """The official raw-value -> train-id table, applied with a lookup table.

    `table` maps every raw value the format may contain to a train id or IGNORE_INDEX. A raw
    value missing from the table is an error naming the file: a label image from another
    dataset, or a corrupted one, must not be scored silently.
    """

    def __init__(self, table: dict[int, int]):
        if not table:
            raise ValueError("empty label mapping")
        self.table = dict(table)
        self.lut = np.full(max(table) + 1, -1, dtype=np.int32)
        for raw, train_id in table.items():
            self.lut[raw] = train_id

    def __call__(self, raw: np.ndarray, where) -> np.ndarray:
        raw = np.asarray(raw)
        if raw.size and (raw.min() < 0 or raw.max() >= len(self.lut)):
            bad = np.unique(raw[(raw < 0) | (raw >= len(self.lut))])
            raise UserError(f"{where}: label values {_few(bad)} are outside the official mapping")
        mapped = self.lut[raw]
        if (mapped < 0).any():
            raise UserError(f"{where}: label values {_few(np.unique(raw[mapped < 0]))} are outside the official mapping")
        return mapped.astype(np.uint8)


def _few(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return shown + (f", ... ({len(values)} values)" if len(values) > limit else "")


class SegmentationDataset:
    """Base class of the registered datasets (see `transfer.datasets.register_dataset`)."""

    name: ClassVar[str]
    splits: ClassVar[tuple[str, ...]]  # the official split names accepted by `samples`
    unlabelled_splits: ClassVar[tuple[str, ...]] = ()  # official splits whose labels are not public
    train_split: ClassVar[str]  # defaults of the transfer stage
    eval_split: ClassVar[str]
    transforms: ClassVar[Transforms] = Transforms()
    class_sets: ClassVar[tuple[int, ...]] = ()  # selectable class counts (nyuv2: 40, 13); () = one fixed set
    # At most this many images of the training pool form the validation split (at most a fifth of
    # the pool; whole `validation_group`s). docs/datasets.md, "Validation split".
    validation_size: ClassVar[int] = 100
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX

    def __init__(self, root, classes: int | None = None):
        self.check_classes(classes)
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"{self.root}: dataset folder not found")

    @classmethod
    def check_classes(cls, classes: int | None) -> None:
        if classes is None:
            return
        if not cls.class_sets:
            raise UserError(f"dataset {cls.name} has a single class set; the classes option is for datasets "
                            f"with several (nyuv2: 40 or 13)")
        if classes not in cls.class_sets or isinstance(classes, bool):
            raise UserError(f"dataset {cls.name}: classes must be one of {', '.join(map(str, cls.class_sets))}, "
                            f"not {classes!r}")

    def describe(self, sample: Sample) -> str:
        """Where a sample's label lives, for error messages."""
        return str(sample.label)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def check_split(self, split: str) -> None:
        if split in self.unlabelled_splits:
            raise UserError(f"dataset {self.name}: the {split} split has no public labels (scored only on the "
                            f"official server); labelled splits: {', '.join(self.splits)}")
        if split not in self.splits:
            raise UserError(f"dataset {self.name} has no split {split!r}; official splits: {', '.join(self.splits)}")

    def samples(self, split: str) -> list[Sample]:
        raise NotImplementedError

    def read_image(self, sample: Sample) -> np.ndarray:
        return read_rgb(sample.image)

    def read_label(self, sample: Sample) -> np.ndarray:
        raise NotImplementedError

    def validation_group(self, sample: Sample) -> str:
        """The unit the validation split holds out whole, so that no neighbour of a validation
        image is trained on (a video's sequence, a city's drives); an image by default."""
        return sample.stem

    def transfer_sets(self, train_split: str | None = None, eval_split: str | None = None
                      ) -> tuple[list[Sample], list[Sample], list[Sample]]:
        """(training pool, validation set, evaluation set). The validation set is held out of the
        training pool (`held_out_validation`): few-shot subsets are drawn from what is left, and
        hyper-parameters are selected on it, never on the evaluation set."""
        pool, evaluation = self.transfer_pools(train_split, eval_split)
        validation = held_out_validation(pool, self.validation_size, self.validation_group, self.name)
        held = {s.stem for s in validation}
        return [s for s in pool if s.stem not in held], validation, evaluation

    def transfer_pools(self, train_split: str | None = None, eval_split: str | None = None
                       ) -> tuple[list[Sample], list[Sample]]:
        """(training pool, evaluation set) for the transfer stage. Few-shot subsets are drawn
        from the pool; datasets without a labelled evaluation split (KITTI) override this."""
        train_split, eval_split = train_split or self.train_split, eval_split or self.eval_split
        if train_split == eval_split:
            raise UserError(f"dataset {self.name}: training and evaluation split are both {train_split!r}")
        train, evaluation = self.samples(train_split), self.samples(eval_split)
        overlap = {s.stem for s in train} & {s.stem for s in evaluation}
        if overlap:
            raise UserError(f"dataset {self.name}: splits {train_split} and {eval_split} share "
                            f"{len(overlap)} images (e.g. {sorted(overlap)[0]})")
        return train, evaluation


# The validation rule's version, in every cell's data settings (so in its fingerprint): a cell
# trained before the split existed drew its few-shot subset from the whole pool.
VALIDATION_RULE = 1


def held_out_validation(pool: list[Sample], size: int, group_of, dataset: str) -> list[Sample]:
    """The validation split of a training pool: whole groups in a seeded order (seeded by the
    dataset's name only: one split per dataset, the same for every backbone, seed and cell) until
    min(size, a fifth of the pool) images are held out; at least one group stays for training."""
    import zlib

    groups: dict[str, list[Sample]] = {}
    for sample in sorted(pool, key=lambda s: s.stem):
        groups.setdefault(group_of(sample), []).append(sample)
    if len(groups) < 2:
        raise UserError(f"dataset {dataset}: the training pool has {len(groups)} "
                        f"{'group' if len(groups) == 1 else 'groups'} of images (sequences, cities, ...); a "
                        f"validation split needs at least 2, one held out and one to train on")
    target = min(size, max(1, len(pool) // 5))
    names = sorted(groups)
    order = np.random.default_rng(zlib.crc32(f"{dataset}/validation".encode())).permutation(len(names))
    held: list[Sample] = []
    for i in order[:-1]:  # never the last group: something must stay to train on
        if len(held) >= target:
            break
        held += groups[names[i]]
    return sorted(held, key=lambda s: s.stem)


DATASETS: Registry[SegmentationDataset] = Registry("dataset")
register_dataset = DATASETS.register
list_datasets = DATASETS.names
dataset_class = DATASETS.get


def open_dataset(name: str, root, classes: int | None = None) -> SegmentationDataset:
    return dataset_class(name)(root, classes=classes)


def read_pair(dataset: SegmentationDataset, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    image, label = dataset.read_image(sample), dataset.read_label(sample)
    if image.shape[:2] != label.shape:
        raise UserError(f"{dataset.describe(sample)}: label is {label.shape[1]}x{label.shape[0]} but its image is "
                        f"{image.shape[1]}x{image.shape[0]}")
    return image, label


# --- shared readers -------------------------------------------------------------------------------

def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{path}: missing folder ({what})")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise UserError(f"{path}: missing file ({what})")
    return path


def read_rgb(path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise UserError(f"{path}: image not found") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"{path}: unreadable image ({exc})") from None


def read_index_png(path, modes: tuple[str, ...] = ("L", "P")) -> np.ndarray:
    """The stored values of a single-channel label PNG (palette indices for mode P, never the
    colours). An RGB label -- e.g. a `_color.png` put where ids belong -- is refused."""
    try:
        with Image.open(path) as img:
            if img.mode not in modes:
                raise UserError(f"{path}: label PNG has mode {img.mode}; expected {' or '.join(modes)} "
                                f"(class indices, not colours)")
            return np.asarray(img)
    except FileNotFoundError:
        raise UserError(f"{path}: label not found") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"{path}: unreadable label ({exc})") from None


def pair_by_stem(images: dict[str, Path], labels: dict[str, Path], what: str) -> list[Sample]:
    """Pair images with labels by stem; an image without its label is an error naming it."""
    missing = sorted(set(images) - set(labels))
    if missing:
        raise UserError(f"{images[missing[0]]}: image has no {what} label"
                        + (f" ({len(missing)} images lack one)" if len(missing) > 1 else ""))
    return [Sample(stem, images[stem], labels[stem]) for stem in sorted(images)]
