"""`voc`: Pascal VOC 2012 segmentation, 21 classes, optionally with the SBD "trainaug" labels.

Download: http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar and untar it.
Root is the `VOC2012` folder or a parent of it at most 2 levels up (`VOCdevkit`, its parent):

    VOCdevkit/VOC2012/
        JPEGImages/2007_000032.jpg ...
        SegmentationClass/2007_000032.png ...          (palette PNGs: the stored index is the class)
        ImageSets/Segmentation/{train,val,trainval}.txt (one stem per line)
        SegmentationClassAug/2007_000032.png ...        (optional, SBD: only for the split trainaug)
        ImageSets/Segmentation/trainaug.txt             (optional; or train_aug.txt, or aug.txt)

`SegmentationObject/`, `Annotations/` and JPEGs listed in no split are ignored.

Labels: the palette *indices* of the PNG are read, never its colours; 0 = background, 1..20 the
classes, 255 the void boundary -> 255 (ignore); any other value is an error naming the file. The
palette is the standard VOC colour map (bit-interleaved class index), computed below.

Splits: `train` (1,464 images; default train split), `val` (1,449; default eval split),
`trainval`, and `trainaug` (10,582) once `SegmentationClassAug/` exists: the SBD labels
(http://home.bharathh.info/pubs/codes/SBD/download.html) converted to PNGs, e.g. by MMSegmentation's
tools/dataset_converters/voc_aug.py, or the widely shared SegmentationClassAug.zip. Its list is
`trainaug.txt`, else `train_aug.txt` (lines may be "/JPEGImages/x.jpg /SegmentationClassAug/x.png"),
else `train.txt` + `aug.txt` (MMSegmentation's aug.txt leaves out the train images), else every PNG
of `SegmentationClassAug/` whose stem is not in `val.txt`. Its labels come from
`SegmentationClassAug/`, or from `SegmentationClass/` where the former has none (MMSegmentation's
converter writes SBD images only).

Transforms: short side resized to 512 (aspect kept), random 512x512 crop (padded with ignore) for
training, short side 512 for evaluation.
"""

from __future__ import annotations

from pathlib import Path

from bench.core.errors import UserError
from transfer.datasets.base import register_dataset
from transfer.datasets.base import (IGNORE_INDEX, LabelMapping, Sample, SegmentationDataset, Transforms,
                                    read_index_png, require_dir, require_file)

CLASS_NAMES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
MAPPING = LabelMapping({**{i: i for i in range(len(CLASS_NAMES))}, 255: IGNORE_INDEX})
DOWNLOAD = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"


def voc_colour(index: int) -> tuple[int, int, int]:
    """The devkit's colour map: bits 0, 1, 2 of the index go to the top bit of R, G, B, bits 3, 4, 5
    to the next bit, and so on."""
    rgb = [0, 0, 0]
    for shift in range(7, -1, -1):
        for channel in range(3):
            rgb[channel] |= (index & 1) << shift
            index >>= 1
    return rgb[0], rgb[1], rgb[2]


@register_dataset
class VOC(SegmentationDataset):
    name = "voc"
    validation_size = 300  # of the 1,464 train (10,582 trainaug) images
    description = "Pascal VOC 2012 segmentation (optionally with SBD's augmented train set), 21 classes"
    splits = ("train", "val", "trainval", "trainaug")
    train_split, eval_split = "train", "val"
    transforms = Transforms(resize=512, crop=(512, 512), eval_resize=512)
    class_names = CLASS_NAMES
    palette = tuple(voc_colour(i) for i in range(len(CLASS_NAMES)))

    def __init__(self, root, classes=None):
        super().__init__(root, classes)
        self.base = _find_voc2012(self.root)
        self.lists = self.base / "ImageSets" / "Segmentation"

    def samples(self, split: str) -> list[Sample]:
        self.check_split(split)
        if split != "trainaug":
            list_file = self.lists / f"{split}.txt"
            labels = require_dir(self.base / "SegmentationClass", "Pascal VOC labels")
            return self._pair(_read_list(list_file), list_file, [labels])
        aug = self.base / "SegmentationClassAug"
        if not aug.is_dir():
            raise UserError(f"{aug}: missing folder; split trainaug needs the SBD labels: convert SBD "
                            f"(http://home.bharathh.info/pubs/codes/SBD/download.html) with MMSegmentation's "
                            f"tools/dataset_converters/voc_aug.py, or unzip SegmentationClassAug.zip here")
        stems, list_file = self._trainaug_stems(aug)
        return self._pair(stems, list_file, [aug, self.base / "SegmentationClass"])

    def read_label(self, sample: Sample):
        return MAPPING(read_index_png(sample.label), sample.label)

    def _trainaug_stems(self, aug: Path) -> tuple[set[str], Path]:
        for name in ("trainaug.txt", "train_aug.txt"):
            if (self.lists / name).is_file():
                return _read_list(self.lists / name), self.lists / name
        if (self.lists / "aug.txt").is_file():
            return _read_list(self.lists / "train.txt") | _read_list(self.lists / "aug.txt"), self.lists / "aug.txt"
        return {p.stem for p in aug.glob("*.png")} - _read_list(self.lists / "val.txt"), aug

    def _pair(self, stems: set[str], listed_in: Path, label_dirs: list[Path]) -> list[Sample]:
        """Samples of the listed stems; the first of `label_dirs` holding the stem's PNG gives its label."""
        images = require_dir(self.base / "JPEGImages", "Pascal VOC images")
        have_jpg = {p.name for p in images.iterdir()}
        have_png = [{p.name for p in d.iterdir()} if d.is_dir() else set() for d in label_dirs]
        out = []
        for stem in sorted(stems):
            if f"{stem}.jpg" not in have_jpg:
                raise UserError(f"{images / stem}.jpg: missing image of {stem} (listed in {listed_in})")
            label_dir = next((d for d, names in zip(label_dirs, have_png) if f"{stem}.png" in names), None)
            if label_dir is None:
                raise UserError(f"{label_dirs[0] / stem}.png: missing label of {stem} (listed in {listed_in})")
            out.append(Sample(stem, images / f"{stem}.jpg", label_dir / f"{stem}.png"))
        if not out:
            raise UserError(f"{listed_in}: lists no images")
        return out


def _read_list(path: Path) -> set[str]:
    """Stems of a split list. The first token of a line may be a path (DeepLab's train_aug.txt)."""
    require_file(path, "Pascal VOC split list")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable split list ({exc})") from None
    return {Path(line.split()[0]).stem for line in lines if line.strip()}


def _find_voc2012(root: Path) -> Path:
    if (root / "JPEGImages").is_dir() and (root / "ImageSets").is_dir():
        return root
    for depth in ([root / "VOC2012"], sorted(root.glob("*/VOC2012"))):
        found = [p for p in depth if p.is_dir()]
        if len(found) > 1:
            raise UserError(f"{root}: several VOC2012 folders ({', '.join(map(str, found))}); pass one as the root")
        if found:
            if not ((found[0] / "JPEGImages").is_dir() and (found[0] / "ImageSets").is_dir()):
                raise UserError(f"{found[0]}: VOC2012 folder without JPEGImages/ and ImageSets/; untar {DOWNLOAD}")
            return found[0]
    raise UserError(f"{root}: no Pascal VOC 2012 here; expected JPEGImages/ and ImageSets/ in this folder or in a "
                    f"VOC2012/ folder at most 2 levels down (e.g. VOCdevkit/VOC2012); untar {DOWNLOAD}")
