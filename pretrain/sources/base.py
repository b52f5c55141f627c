"""What a pre-training dataset looks like to a method: items of a few kinds, read lazily.

A source is one dataset on disk (the generated world, KITTI raw, Cityscapes sequences, NYUv2, a
folder of video frames, an ImageNet-layout folder). It lists item ids per *kind* and loads one
item at its native size as numpy arrays; resizing, cropping and batching happen in
`pretrain.batches`, the same for every source. A method asks for the kind it trains on, and a
source that cannot deliver it is a one-line error naming the kinds it can.

Kinds and the arrays `load` returns for them:

| kind     | fields                                                                                   |
|----------|------------------------------------------------------------------------------------------|
| `image`  | `image` H×W×3 uint8                                                                      |
| `depth`  | `image`; `depth` H×W float32 metres, 0 where there is no measurement (sparse LiDAR)       |
| `video`  | `frames` [previous, current, next] of H×W×3 uint8; `K` 3×3 float64 or None (uncalibrated) |
| `stereo` | `left`, `right` H×W×3 uint8 (rectified); `K` 3×3 float64; `baseline` metres (right camera |
|          | sits at +baseline along the left camera's x axis)                                        |
| `label`  | `image`; `label` int (index into `class_names`)                                          |

Item ids are stable strings (relative paths without extension, e.g. `seq_000/000003`): the
pseudo-labels of `bench pseudo-label` are keyed by the `video` item id of the centre frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
from PIL import Image

from bench.core.errors import UserError
from bench.core.registry import Registry

KINDS = ("image", "depth", "video", "stereo", "label")


class PretrainSource:
    name: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]]
    # Native-size reading is the default; a source whose frames are large names the size its
    # items are resized to unless the user says otherwise (`--resize`), as HxW.
    default_size: ClassVar[tuple[int, int] | None] = None
    # Depth range of the scenes (metres): the sigmoid depth heads are scaled to it.
    max_depth: float = 80.0
    # The farthest depth of the self-supervised depth methods' disparity head where their
    # reference recipe uses another than `max_depth` (monodepth2: 100 m on KITTI); None: max_depth.
    self_supervised_max_depth: float | None = None
    class_names: list[str] = []
    # The reader options (`--source-option KEY=VALUE`) this source understands.
    option_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, root: Path, options: dict):
        self.root = Path(root)
        self.options = options
        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            raise UserError(f"dataset {self.name}: unknown source option {unknown[0]!r} "
                            f"(options: {', '.join(self.option_names) or 'none'})")

    def items(self, kind: str) -> list[str]:
        """Item ids of `kind`, sorted; raises UserError when there are none."""
        raise NotImplementedError

    def load(self, kind: str, item_id: str) -> dict:
        raise NotImplementedError

    @classmethod
    def content_ids(cls, options: dict) -> dict:
        """Hashes of files the reader options name whose contents decide what is trained on (added
        to the pre-training fingerprint, so new contents under an old name make a new training)."""
        return {}

    def check_kind(self, kind: str, method: str) -> None:
        if kind not in self.kinds:
            raise UserError(f"--method {method} trains on {kind} data, which dataset {self.name!r} does not "
                            f"provide (it has: {', '.join(self.kinds)})")


SOURCES: Registry[PretrainSource] = Registry("pre-training dataset")
register_source = SOURCES.register
list_sources = SOURCES.names


def open_source(name: str, root, options: dict | None = None) -> PretrainSource:
    cls = SOURCES.get(name)
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: folder not found")
    return cls(root, dict(options or {}))


# Readers shared by sources: every failure is one line naming the file.

def read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable image ({exc})") from None


def read_png_uint16(path: Path) -> np.ndarray:
    """A 16-bit PNG (KITTI depth, Cityscapes disparity) as uint16, refusing 8-bit files, which
    would silently give depths 256 times too small."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable PNG ({exc})") from None
    if arr.dtype not in (np.uint16, np.int32) or arr.ndim != 2:
        raise UserError(f"{path}: expected a single-channel 16-bit PNG, got {arr.dtype} with shape {arr.shape}")
    return arr.astype(np.uint16)


def require_items(ids: list[str], where: Path, what: str) -> list[str]:
    if not ids:
        raise UserError(f"{where}: no {what} found")
    return sorted(ids)


def lazy(fn: Callable[[], object]) -> Callable[[], object]:
    """Memoise a zero-argument reader (calibration files are read once per source)."""
    cache: list = []

    def get():
        if not cache:
            cache.append(fn())
        return cache[0]

    return get
