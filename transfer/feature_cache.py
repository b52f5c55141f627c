"""Encoder features computed once: frozen and linear cells train their head on a cache.

A frozen encoder maps the same input to the same features, so running it on every step is
waste. `FeatureCache` keeps, per key (a training `View` or an evaluation image index), what the
decoder's `prepare` makes of the encoder's levels (by default just the levels it reads) -- in memory up to a byte budget, then as safetensors files in a
spill folder that `close()` removes.

Augmentation stays honest: a key is an exact augmented view (image, crop box, flip), and its
features are the encoder's output on that view's pixels, never a transformed feature map. When
a dataset has no random crop the views are just (image, flip), so the cached cell draws exactly
the batches the uncached one draws and ends with the same weights (up to float summation order
in the encoder). With a random crop every step would be a new view, so a cached cell instead
samples among `views_per_image` crops drawn once per image (docs/protocols.md).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Callable, Hashable

import torch
from safetensors.torch import load_file, save_file

DEFAULT_BUDGET_BYTES = 4 * 1024**3
DEFAULT_VIEWS_PER_IMAGE = 8


class FeatureCache:
    def __init__(self, encode: Callable[[torch.Tensor], list[torch.Tensor | None]],
                 budget_bytes: int = DEFAULT_BUDGET_BYTES, spill_dir: Path | None = None):
        self._encode = encode  # uint8 images -> feature levels, None where nothing is needed
        self.levels: list[int] = []
        self._budget, self._spill_dir = budget_bytes, spill_dir
        self._memory: dict[Hashable, list[torch.Tensor]] = {}
        self._on_disk: dict[Hashable, Path] = {}
        self.stats = {"computed": 0, "hits": 0, "bytes_in_memory": 0, "bytes_on_disk": 0}
        self._num_levels: int | None = None

    def features(self, keys: list[Hashable], images: Callable[[list[Hashable]], torch.Tensor]) -> list:
        """Stacked feature levels of `keys` (None where the encoder's output was None); `images`
        renders the uint8 batch of the keys not cached yet, which are encoded together."""
        missing = [k for k in dict.fromkeys(keys) if k not in self._memory and k not in self._on_disk]
        self.stats["hits"] += len(keys) - len(missing)
        fresh: dict[Hashable, list[torch.Tensor]] = {}
        if missing:
            out = self._encode(images(missing))
            self._num_levels = len(out)
            self.levels = [i for i, t in enumerate(out) if t is not None]
            for j, key in enumerate(missing):
                # clone: a slice would keep the whole batch's storage alive
                fresh[key] = [out[i][j].detach().clone() for i in self.levels]
                self._store(key, fresh[key])
            self.stats["computed"] += len(missing)
        per_key = [fresh.get(k) or self._load(k) for k in keys]
        stacked = [None] * self._num_levels
        for slot, i in enumerate(self.levels):
            stacked[i] = torch.stack([levels[slot] for levels in per_key])
        return stacked

    def _store(self, key: Hashable, levels: list[torch.Tensor]) -> None:
        size = sum(t.numel() * t.element_size() for t in levels)
        if self.stats["bytes_in_memory"] + size <= self._budget or self._spill_dir is None:
            self._memory[key] = levels
            self.stats["bytes_in_memory"] += size
            return
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        path = self._spill_dir / (hashlib.sha1(repr(key).encode()).hexdigest() + ".safetensors")
        save_file({str(i): t.contiguous() for i, t in enumerate(levels)}, str(path))
        self._on_disk[key] = path
        self.stats["bytes_on_disk"] += size

    def _load(self, key: Hashable) -> list[torch.Tensor]:
        if key in self._memory:
            return self._memory[key]
        tensors = load_file(str(self._on_disk[key]))
        return [tensors[str(i)] for i in range(len(self.levels))]

    def close(self) -> None:
        self._memory.clear()
        self._on_disk.clear()
        if self._spill_dir is not None:
            shutil.rmtree(self._spill_dir, ignore_errors=True)
