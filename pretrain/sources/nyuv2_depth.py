"""`nyuv2_depth`: the 1449 labelled NYU Depth V2 frames with their (inpainted, dense) depth maps.

Layout (ROOT, the folder the segmentation transfer's `nyuv2` reads too):

    ROOT/nyu_depth_v2_labeled.mat   MATLAB v7.3 (HDF5): `images` 480x640x3xN uint8 and `depths`
                                    480x640xN single (metres), which HDF5 shows axis-reversed as
                                    (N, 3, W, H) and (N, W, H)
    ROOT/splits.mat                 optional: trainNdxs / testNdxs, 1-based image indices

Item ids are the 1-based image index, zero-padded (`0001`..`1449`), as in the transfer stage.
Kinds: `image` and `depth` (H x W metres; a non-finite or negative value counts as no
measurement). Items are read one at a time; each process opens the HDF5 file itself on first use
(h5py handles survive neither pickling nor fork).

Options (`--source-option KEY=VALUE`):
- `split`: `train` (the default when splits.mat exists: trainNdxs only, so the images the NYUv2
  segmentation transfer evaluates on are never seen in pre-training) or `all` (every image;
  the default without splits.mat).
"""

from __future__ import annotations


import h5py
import numpy as np

from bench.core.errors import UserError
from bench.core.matlab import ProcessLocalHDF5, read_nyuv2_splits

from .base import PretrainSource, register_source, require_items

OPTIONS = ("split",)
LABELLED = "nyu_depth_v2_labeled.mat"
URL = "http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/nyu_depth_v2_labeled.mat"
META_URL = "https://github.com/ankurhanda/nyuv2-meta-data"  # splits.mat, as the segmentation dataset says



@register_source
class NYUv2Depth(PretrainSource):
    name = "nyuv2_depth"
    description = "NYUv2's labelled .mat: RGB and metric depth of 1449 indoor images"
    kinds = ("image", "depth")
    option_names = OPTIONS
    default_size = (240, 320)
    max_depth = 10.0

    def __init__(self, root, options):
        super().__init__(root, options)
        self.path = self.root / LABELLED
        if not self.path.is_file():
            raise UserError(f"{self.path}: file not found; download it from {URL}")
        self.splits = self.root / "splits.mat"
        self.split = options.get("split") or ("train" if self.splits.is_file() else "all")
        if self.split not in ("train", "all"):
            raise UserError(f"--source-option split={self.split!r}: use train or all")
        if self.split == "train" and not self.splits.is_file():
            raise UserError(f"{self.splits}: file not found; split=train needs it (trainNdxs), or use split=all")
        self._mat = ProcessLocalHDF5(self.path, f"re-download it from {URL}", self._check_layout)

    def _check_layout(self, f: h5py.File) -> None:
        images, depths = f.get("images"), f.get("depths")
        if not isinstance(images, h5py.Dataset) or not isinstance(depths, h5py.Dataset):
            raise UserError(f"{self.path}: variables images and depths not found; re-download it from {URL}")
        # MATLAB is column-major, so HDF5 shows its H x W x 3 x N as (N, 3, W, H).
        if (images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8
                or depths.shape != (images.shape[0], *images.shape[2:]) or depths.dtype.kind != "f"):
            raise UserError(f"{self.path}: images {images.shape} {images.dtype} and depths {depths.shape} "
                            f"{depths.dtype} are not the NYUv2 layout (N,3,W,H) uint8 / (N,W,H) float")

    def items(self, kind: str) -> list[str]:
        count = self._mat.file()["images"].shape[0]
        if self.split == "all":
            indices = range(1, count + 1)
        else:
            indices = read_nyuv2_splits(self.splits, count, f"download it from {META_URL}", LABELLED)["train"]
        return require_items(sorted({f"{int(i):04d}" for i in indices}), self.path, "images")

    def load(self, kind: str, item_id: str) -> dict:
        index = int(item_id) - 1
        image = np.ascontiguousarray(self._mat.read("images", index).transpose(2, 1, 0))
        if kind == "image":
            return {"image": image}
        if kind == "depth":
            depth = np.ascontiguousarray(self._mat.read("depths", index).T, dtype=np.float32)
            depth[~np.isfinite(depth) | (depth < 0)] = 0.0
            return {"image": image, "depth": depth}
        raise ValueError(kind)
