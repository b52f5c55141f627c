"""Batches for pre-training: draw items of one kind from a source, resize, crop, stack.

Every item is resized to one training size (`resize`, else the source's default, else the first
item's native size), then optionally cut to a random `crop` (the paper's "Depth-cropped"
variant). Intrinsics follow both operations: resizing scales focal lengths and principal point,
cropping shifts the principal point. Depth maps are resized by nearest neighbour, so a sparse
(LiDAR) map stays sparse and no measurement is invented by interpolation.

Batches are drawn from the step's generator, so a resumed run sees exactly the batches of an
uninterrupted one. Resized items are cached in memory up to `cache_bytes`.

Decoding and resizing (the costly part) may run ahead in `torch.utils.data.DataLoader` worker
processes (`pretrain.loader`): the workers load the items of the batches the step generators
will draw, and `draw` takes them instead of loading them itself. Items are a pure function of
their index, so a batch is bit-identical with and without workers; the crop offsets and every
augmentation are still drawn here, in the training process, from the step's generator. `draw`
then moves the batch to `device`, and `wait_s` adds up the time spent getting items (decoding
them, or waiting for a worker's): the run's data wait.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from bench.core.errors import UserError
from pretrain.sources.base import PretrainSource

CACHE_BYTES = 1 << 30
IMAGE_FIELDS = ("image", "left", "right")


def _image_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _resize_image(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    out = F.interpolate(img[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return out.round().clamp(0, 255).to(torch.uint8)


def _resize_nearest(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t[None, None].float(), size=size, mode="nearest")[0, 0].to(t.dtype)


def scale_intrinsics(K: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    K = np.array(K, dtype=np.float64)
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    K[0, 0] *= sx
    K[0, 2] *= sx
    K[1, 1] *= sy
    K[1, 2] *= sy
    return K


class Batches:
    def __init__(self, source: PretrainSource, kind: str, method: str, *, resize=None, crop=None,
                 cache_bytes: int = CACHE_BYTES):
        source.check_kind(kind, method)
        self.source, self.kind = source, kind
        self.ids = source.items(kind)
        self.size = tuple(resize) if resize else source.default_size
        self.crop = tuple(crop) if crop else None
        self.cache_bytes, self._cache, self._used = cache_bytes, {}, 0
        self.device = torch.device("cpu")
        self.rank, self.world = 0, 1  # data-parallel: this process's share of each step's batch
        self.prefetched = None  # an iterator of (indices, items) from pretrain.loader, or None
        self._ahead: tuple | None = None
        self.wait_s = 0.0
        if self.size is None:
            self._item(0)  # the first item's native size becomes the training size
        if self.crop and (self.crop[0] > self.size[0] or self.crop[1] > self.size[1]):
            raise UserError(f"--crop {self.crop[0]}x{self.crop[1]} is larger than the training size "
                            f"{self.size[0]}x{self.size[1]}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def out_size(self) -> tuple[int, int]:
        return self.crop or self.size

    def _item(self, index: int) -> dict:
        if index in self._cache:
            return self._cache[index]
        raw = self.source.load(self.kind, self.ids[index])
        first = raw.get("image", raw.get("left", (raw.get("frames") or [None])[0]))
        native = first.shape[:2]
        if self.size is None:
            self.size = tuple(native)
        item = self._resize(raw, native)
        nbytes = sum(v.numel() * v.element_size() for v in item.values() if isinstance(v, torch.Tensor))
        if self._used + nbytes <= self.cache_bytes:
            self._cache[index] = item
            self._used += nbytes
        return item

    def _resize(self, raw: dict, native) -> dict:
        size, item = self.size, {}
        for key, value in raw.items():
            if key in IMAGE_FIELDS:
                if value.shape[:2] != native:
                    raise UserError(f"{self.source.name} item: {key} is {value.shape[:2]}, expected {native}")
                item[key] = _resize_image(_image_tensor(value), size)
            elif key == "frames":
                item[key] = torch.stack([_resize_image(_image_tensor(f), size) for f in value])
            elif key == "depth":
                item[key] = _resize_nearest(torch.from_numpy(np.array(value, dtype=np.float32)), size)
            elif key == "pseudo":  # a dense teacher prediction: smooth, so bilinear
                t = torch.from_numpy(np.array(value, dtype=np.float32))[None, None]
                item[key] = F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0]
            elif key == "K":
                item[key] = None if value is None else torch.from_numpy(scale_intrinsics(value, native, size))
            elif key in ("baseline", "label"):
                item[key] = value
            else:
                item[key] = torch.as_tensor(value)
        return item

    def draw(self, gen: torch.Generator, batch_size: int) -> dict:
        """A batch: image fields uint8 N×3×h×w (`frames` N×3×3×h×w), `depth` N×h×w, `K` N×3×3
        float32 or None, `baseline` N float32, `label` N int64, and `ids`, on `device`. With
        several data-parallel processes, N is this process's slice of the `batch_size` drawn."""
        idx = draw_indices(gen, len(self.ids), batch_size)[self.rank::self.world]
        t0 = time.perf_counter()
        items = self._take_prefetched(idx)
        if items is None:
            items = [self._item(i) for i in idx]
        self.wait_s += time.perf_counter() - t0
        offsets = self._crop_offsets(gen, batch_size)[self.rank::self.world]
        out: dict = {"ids": [self.ids[i] for i in idx]}
        for key in items[0]:
            values = [it[key] for it in items]
            if key == "K":
                out[key] = None if values[0] is None else torch.stack([
                    _shift_principal_point(K, y, x) for K, (y, x) in zip(values, offsets)]).float()
            elif key in ("baseline",):
                out[key] = torch.tensor(values, dtype=torch.float32)
            elif key == "label":
                out[key] = torch.tensor(values, dtype=torch.int64)
            else:
                out[key] = torch.stack([self._cut(v, y, x) for v, (y, x) in zip(values, offsets)])
        if self.device.type != "cpu":
            non_blocking = self.prefetched is not None  # the loader pins its batches' memory
            out = {k: v.to(self.device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
                   for k, v in out.items()}
        return out

    def _take_prefetched(self, idx: list[int]) -> list[dict] | None:
        """The loader's next batch when it is the one drawn; None (load here) otherwise -- e.g. a
        method's one-off draw from its own generator. A batch drawn past stays for the next call."""
        if self.prefetched is None:
            return None
        if self._ahead is None:
            self._ahead = next(self.prefetched, None)
        if self._ahead is None or list(self._ahead[0]) != list(idx):
            return None
        items, self._ahead = self._ahead[1], None
        return items

    def item(self, index: int) -> dict:
        """Item `index` decoded and resized to the training size (what a loader worker makes)."""
        return self._item(index)

    def _crop_offsets(self, gen, n) -> list[tuple[int, int]]:
        if not self.crop:
            return [(0, 0)] * n
        ys = torch.randint(self.size[0] - self.crop[0] + 1, (n,), generator=gen).tolist()
        xs = torch.randint(self.size[1] - self.crop[1] + 1, (n,), generator=gen).tolist()
        return list(zip(ys, xs))

    def _cut(self, t: torch.Tensor, y: int, x: int) -> torch.Tensor:
        if not self.crop:
            return t
        return t[..., y:y + self.crop[0], x:x + self.crop[1]]


def draw_indices(gen: torch.Generator, count: int, batch_size: int) -> list[int]:
    """The items of a step's batch: the first draw from its generator (so a loader can compute
    the batches of future steps from their step numbers alone)."""
    return torch.randint(count, (batch_size,), generator=gen).tolist()


def _shift_principal_point(K: torch.Tensor, y: int, x: int) -> torch.Tensor:
    K = K.clone()
    K[0, 2] -= x
    K[1, 2] -= y
    return K
