"""`kitti`: the KITTI semantic segmentation benchmark (200 labelled frames, 19 Cityscapes classes).

Download `data_semantics.zip` from https://www.cvlibs.net/datasets/kitti/eval_semseg.php and
unzip it; ROOT is the folder holding `training/` (the parent holding `data_semantics/training/`
is accepted too):

    ROOT/training/image_2/<NNNNNN>_10.png    RGB, about 1242x375 (sizes vary slightly)
    ROOT/training/semantic/<NNNNNN>_10.png   Cityscapes label ids

Stems are `<NNNNNN>_10` (e.g. `000042_10`). Labels hold the label ids of the Cityscapes table
(`cityscapes_labels`) and are mapped to its 19 train ids exactly as Cityscapes' are (the other
ids become 255 = ignore). `training/semantic_rgb/`, `training/instance/`, `testing/` (no public
labels) and files not named `<NNNNNN>_10.png` are ignored.

Split: `training` (200 images) is the only labelled one, so the transfer stage splits it with a
fixed rule, independent of seed and train size: the evaluation set is the images whose frame
number N (the stem's first six digits) has N % 4 == 3 (50 images: 000003_10, 000007_10, ...,
000199_10), and the training pool is the other 150. The rule reads the frame number, not the
position in a listing, so a missing file cannot shift the evaluation set.

Default transforms: resize to 192x640 for training and evaluation, no crop (resize (192, 640),
crop None, eval_resize (192, 640)), the resolution of monodepth2 and Lao et al.
"""

from __future__ import annotations

import re

from bench.core.errors import UserError
from transfer.datasets.base import register_dataset
from transfer.datasets.base import (LabelMapping, Sample, SegmentationDataset, Transforms, read_index_png,
                                    require_dir)
from transfer.datasets.cityscapes_labels import LABEL_ID_TO_TRAIN_ID, TRAIN_NAMES, TRAIN_PALETTE

FRAME = re.compile(r"\d{6}_10\.png")
EVAL_EVERY = 4  # the evaluation set is every 4th frame: numbers 3, 7, 11, ...


@register_dataset
class Kitti(SegmentationDataset):
    name = "kitti"
    validation_size = 20  # of the 150-frame pool: 130 stay for training subsets up to 128 (Fig. 3)
    description = "KITTI semantic segmentation benchmark (200 labelled frames, 19 Cityscapes classes)"
    splits = ("training",)
    unlabelled_splits = ("testing",)
    train_split = eval_split = "training"
    transforms = Transforms(resize=(192, 640), crop=None, eval_resize=(192, 640))
    class_names = TRAIN_NAMES
    palette = TRAIN_PALETTE

    mapping = LabelMapping(LABEL_ID_TO_TRAIN_ID)

    def __init__(self, root, classes=None):
        super().__init__(root, classes)
        for candidate in (self.root, self.root / "data_semantics"):
            if (candidate / "training").is_dir():
                self.root = candidate
                return
        raise UserError(f"{self.root}: not a KITTI semantics root, expected folder training/ (or "
                        f"data_semantics/training/) in it (unzip data_semantics.zip there)")

    def samples(self, split: str) -> list[Sample]:
        self.check_split(split)
        image_dir = require_dir(self.root / split / "image_2", "KITTI semantics images")
        label_dir = require_dir(self.root / split / "semantic", "KITTI semantics label ids")
        out = []
        for image in sorted(p for p in image_dir.iterdir() if FRAME.fullmatch(p.name)):
            label = label_dir / image.name
            if not label.is_file():
                raise UserError(f"{image}: image has no label; expected {label}")
            out.append(Sample(image.name[:-len(".png")], image, label))
        if not out:
            raise UserError(f"{image_dir}: no <NNNNNN>_10.png images")
        return out

    def read_label(self, sample: Sample):
        return self.mapping(read_index_png(sample.label), sample.label)

    def transfer_pools(self, train_split: str | None = None, eval_split: str | None = None
                       ) -> tuple[list[Sample], list[Sample]]:
        for given in (train_split, eval_split):
            if given not in (None, "training"):
                raise UserError(f"dataset kitti has no split {given!r}: its training pool and evaluation set are "
                                f"fixed parts of training (frames N with N % {EVAL_EVERY} == {EVAL_EVERY - 1} "
                                f"evaluate); leave the splits unset")
        samples = self.samples("training")
        held_out = lambda s: int(s.stem[:6]) % EVAL_EVERY == EVAL_EVERY - 1  # noqa: E731
        evaluation = [s for s in samples if held_out(s)]
        if not evaluation:
            raise UserError(f"{self.root / 'training' / 'image_2'}: no frame number N with "
                            f"N % {EVAL_EVERY} == {EVAL_EVERY - 1}, so nothing is held out for evaluation")
        pool = [s for s in samples if not held_out(s)]
        return pool, evaluation
