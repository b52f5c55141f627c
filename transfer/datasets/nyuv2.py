"""`nyuv2`: NYU Depth V2, the 1449 densely labelled indoor frames, with 40 or 13 classes.

Layout (three files side by side in ROOT; anything else there is ignored):

    ROOT/nyu_depth_v2_labeled.mat   MATLAB v7.3 (HDF5), 2.8 GB:
                                    http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/nyu_depth_v2_labeled.mat
    ROOT/splits.mat                 trainNdxs (795) and testNdxs (654), 1-based image indices, from the
                                    NYU toolbox page or https://github.com/ankurhanda/nyuv2-meta-data
    ROOT/classMapping40.mat         mapClass (1x894, raw label -> 1..40) and className (40 names), from
                                    https://github.com/ankurhanda/nyuv2-meta-data (Gupta et al. 2013)

Labels: raw 0 (unlabelled) -> 255 (ignored); raw r in 1..894 -> mapClass[r] - 1, i.e. train ids
0..39 named by className. A raw value mapClass does not cover is an error naming the file and
the image. `classes=13` folds the 40 classes into the 13-class set of Couprie et al. 2013 /
SceneNet (bed, books, ceiling, chair, floor, furniture, objects, picture, sofa, table, tv, wall,
window) with the table below; `classes` None or 40 keeps 40.

Splits: `train` (trainNdxs, 795 images) and `test` (testNdxs, 654); the transfer stage trains on
train and evaluates on test. Stems are the 1-based image index, zero-padded: `0001`..`1449`.

Default transforms: resize None, crop None, eval_resize None -- train and evaluate at the native
480x640, as the NYUv2 segmentation literature reports it.
"""

from __future__ import annotations


import h5py
import numpy as np

from bench.core.errors import UserError
from bench.core.matlab import ProcessLocalHDF5, integers, read_nyuv2_splits, read_small_mat
from transfer.datasets.base import register_dataset
from transfer.datasets.base import IGNORE_INDEX, LabelMapping, Sample, SegmentationDataset, Transforms, require_file

URL = "http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/nyu_depth_v2_labeled.mat"
META_URL = "https://github.com/ankurhanda/nyuv2-meta-data"

NAMES_13 = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa", "table",
            "tv", "wall", "window")
# 13-class id (1-based) of each 40-class id 1..40: class13Mapping.mat of ankurhanda/nyuv2-meta-data, as
# tabulated in howard-mahe/nyudv2_class_mapping (README, utils/map40to13.m) and hard-coded identically
# by several loaders (e.g. "nyu_40_to_13_classes"). Door counts as wall, blinds/curtain as window.
MAP_40_TO_13 = (12, 5, 6, 1, 4, 9, 10, 12, 13, 6, 8, 6, 13, 10, 6, 13, 6, 7, 7, 5,
                7, 3, 2, 6, 11, 7, 7, 7, 7, 7, 7, 6, 7, 7, 7, 7, 7, 7, 6, 7)
# SceneNet's 13 class colours (ankurhanda/SceneNetv1.0 README, LaTeX \definecolor), times 255.
PALETTE_13 = ((0, 0, 255), (233, 89, 48), (0, 218, 0), (149, 0, 240), (222, 241, 24), (255, 206, 206),
              (0, 224, 229), (106, 136, 204), (117, 29, 41), (240, 35, 235), (0, 167, 156), (249, 139, 0),
              (225, 229, 194))


def _voc_colour(i: int) -> tuple[int, int, int]:
    """Entry i of the PASCAL VOC colour map: the bits of i spread over R, G, B from the top bit down,
    so distinct indices get distinct colours."""
    rgb = [0, 0, 0]
    for bit in range(8):
        for channel in range(3):
            rgb[channel] |= ((i >> (3 * bit + channel)) & 1) << (7 - bit)
    return tuple(rgb)


# NYU ships no colours for its 40 classes; VOC entries 1..40 (0 is black) are distinct and familiar.
PALETTE_40 = tuple(_voc_colour(i) for i in range(1, 41))



@register_dataset
class NYUv2(SegmentationDataset):
    name = "nyuv2"
    validation_size = 80  # a tenth of the 795 training images
    description = "NYUv2 labelled set, 40 (default) or 13 classes, official train/test split"
    splits = ("train", "test")
    train_split, eval_split = "train", "test"
    transforms = Transforms(resize=None, crop=None, eval_resize=None)

    class_sets = (40, 13)

    def __init__(self, root, classes=None):
        super().__init__(root, classes)
        fix = f"download it from {META_URL} into {self.root}"
        self.labelled = require_file(self.root / "nyu_depth_v2_labeled.mat",
                                     f"the NYUv2 root must hold it, splits.mat and classMapping40.mat; "
                                     f"download it from {URL}")
        self._mat = ProcessLocalHDF5(self.labelled, f"re-download it from {URL}", self._check_layout)
        num_images = len(self._mat.file()["labels"])

        mapping = read_small_mat(self.root / "classMapping40.mat", ("mapClass", "className"), fix)
        names_40 = tuple(mapping["className"])
        where = f"{self.root / 'classMapping40.mat'}: mapClass"
        map_class = integers(mapping["mapClass"], where)
        if len(names_40) != 40 or not all(isinstance(n, str) for n in names_40):
            raise UserError(f"{self.root / 'classMapping40.mat'}: className must be a cell array of 40 names "
                            f"(found {len(names_40)} entries); {fix}")
        if map_class.size == 0 or map_class.min() < 1 or map_class.max() > 40:
            raise UserError(f"{where} must map raw labels to 1..40; {fix}")

        if classes == 13:
            self.class_names, self.palette = NAMES_13, PALETTE_13
            to_train = np.array(MAP_40_TO_13)[map_class - 1] - 1
        else:
            self.class_names, self.palette = names_40, PALETTE_40
            to_train = map_class - 1
        table = {raw + 1: int(train_id) for raw, train_id in enumerate(to_train)}
        self.mapping = LabelMapping({0: IGNORE_INDEX, **table})

        self._indices = read_nyuv2_splits(self.root / "splits.mat", num_images, fix, self.labelled.name)

    def _check_layout(self, f: h5py.File) -> None:
        fix = f"re-download it from {URL}"
        for var in ("images", "labels"):
            if not isinstance(f.get(var), h5py.Dataset):
                raise UserError(f"{self.labelled}: variable {var} not found; {fix}")
        # MATLAB stores images as H x W x 3 x N column-major, so HDF5 (row-major) shows the axes
        # reversed: images (N, 3, W=640, H=480), labels (N, W, H). Loaders in the wild agree: they
        # print "(1449, 3, 640, 480)" and read images[i].transpose(2, 1, 0), labels[i].T.
        images, labels = f["images"], f["labels"]
        if (images.ndim != 4 or images.shape[1] != 3 or labels.shape != (images.shape[0], *images.shape[2:])
                or images.dtype != np.uint8 or labels.dtype.kind not in "iu"):
            raise UserError(f"{self.labelled}: images {images.shape} {images.dtype} and labels {labels.shape} "
                            f"{labels.dtype} are not the NYUv2 layout (N,3,W,H) uint8 / (N,W,H) integer; {fix}")

    def samples(self, split: str) -> list[Sample]:
        self.check_split(split)
        return [Sample(f"{i:04d}", i - 1, i - 1) for i in self._indices[split]]

    def read_image(self, sample: Sample) -> np.ndarray:
        return np.ascontiguousarray(self._mat.read("images", sample.image).transpose(2, 1, 0))

    def describe(self, sample: Sample) -> str:
        return f"{self.labelled} image {sample.label + 1:04d} (index {sample.label})"

    def read_label(self, sample: Sample) -> np.ndarray:
        return self.mapping(self._mat.read("labels", sample.label).T, self.describe(sample))
