"""`cityscapes`: Cityscapes fine annotations, 19 evaluated classes.

Download `leftImg8bit_trainvaltest.zip` and `gtFine_trainvaltest.zip` from
https://www.cityscapes-dataset.com/downloads/ (free registration) and unzip both into ROOT:

    ROOT/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    ROOT/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Stems are `<city>_<seq>_<frame>` (e.g. `aachen_000000_000019`). Labels are the label ids of the
official table (`cityscapes_labels`, ids 0..33) mapped to the 19 train ids; the other 15 ids
(unlabeled, parking, guard rail, caravan, ...) become 255 = ignore, as in cityscapesScripts. If
cityscapesScripts' `createTrainIdLabelImgs` has been run, `<stem>_gtFine_labelTrainIds.png`
(values 0..18 and 255) is read instead. The `_color.png`, `_instanceIds.png` and
`_polygons.json` files and anything else in the folders are ignored.

Splits: `train` (2975 images) and `val` (500); the transfer stage trains on `train` and
evaluates on `val`. `test` labels are not public, so it is not a split here.

Default transforms (the MMSegmentation / DeepLab setting): train at native 1024x2048 with random
512x1024 crops, evaluate on the full 1024x2048 image (resize None, crop (512, 1024),
eval_resize None).
"""

from __future__ import annotations

from pathlib import Path

from bench.core.errors import UserError
from transfer.datasets.base import register_dataset
from transfer.datasets.base import (LabelMapping, Sample, SegmentationDataset, Transforms, read_index_png,
                                    require_dir)
from transfer.datasets.cityscapes_labels import (LABEL_ID_TO_TRAIN_ID, TRAIN_ID_TO_TRAIN_ID, TRAIN_NAMES,
                                                 TRAIN_PALETTE)

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"


@register_dataset
class Cityscapes(SegmentationDataset):
    name = "cityscapes"
    validation_size = 500  # whole train cities (about three of the 18)
    description = "Cityscapes gtFine, 19 train classes"
    splits = ("train", "val")
    unlabelled_splits = ("test",)
    train_split, eval_split = "train", "val"
    transforms = Transforms(resize=None, crop=(512, 1024), eval_resize=None)
    class_names = TRAIN_NAMES
    palette = TRAIN_PALETTE

    label_ids = LabelMapping(LABEL_ID_TO_TRAIN_ID)
    train_ids = LabelMapping(TRAIN_ID_TO_TRAIN_ID)

    def __init__(self, root, classes=None):
        super().__init__(root, classes)
        for folder, archive in (("leftImg8bit", "leftImg8bit_trainvaltest.zip"), ("gtFine", "gtFine_trainvaltest.zip")):
            if not (self.root / folder).is_dir():
                raise UserError(f"{self.root}: not a Cityscapes root, expected folder {folder}/ in it "
                                f"(unzip {archive} there)")

    def samples(self, split: str) -> list[Sample]:
        self.check_split(split)
        image_dir = require_dir(self.root / "leftImg8bit" / split, f"Cityscapes {split} images")
        label_dir = require_dir(self.root / "gtFine" / split, f"Cityscapes {split} fine labels")
        out = []
        for city in sorted(p for p in image_dir.iterdir() if p.is_dir()):
            for image in sorted(city.glob("*" + IMAGE_SUFFIX)):
                stem = image.name[:-len(IMAGE_SUFFIX)]
                out.append(Sample(stem, image, self._label_path(label_dir / city.name, stem, image)))
        if not out:
            raise UserError(f"{image_dir}: no <city>/*{IMAGE_SUFFIX} images in split {split}")
        return sorted(out, key=lambda s: s.stem)

    @staticmethod
    def _label_path(folder: Path, stem: str, image: Path) -> Path:
        for suffix in (TRAIN_IDS_SUFFIX, LABEL_IDS_SUFFIX):
            if (folder / (stem + suffix)).is_file():
                return folder / (stem + suffix)
        raise UserError(f"{image}: image has no label; expected {folder / (stem + LABEL_IDS_SUFFIX)}")

    def validation_group(self, sample: Sample) -> str:
        return sample.stem.split("_")[0]  # the city: its drives and neighbouring frames stay together

    def read_label(self, sample: Sample):
        mapping = self.train_ids if sample.label.name.endswith(TRAIN_IDS_SUFFIX) else self.label_ids
        return mapping(read_index_png(sample.label), sample.label)
