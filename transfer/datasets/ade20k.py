"""`ade20k`: the ADE20K SceneParsing benchmark (ADEChallengeData2016), 150 classes.

Download: http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip and unzip it.
Root is the `ADEChallengeData2016` folder or its parent:

    ADEChallengeData2016/
        images/training/ADE_train_00000001.jpg ...        (20,210 images)
        images/validation/ADE_val_00000001.jpg ...        (2,000 images)
        annotations/training/ADE_train_00000001.png ...   (uint8: 0 = other, 1..150 = classes)
        annotations/validation/ADE_val_00000001.png ...

`objectInfo150.txt`, `sceneCategories.txt` and any non-.jpg file among the images are ignored.

Label mapping (MMSegmentation's `reduce_zero_label`): 0 ("other") -> 255 (ignore), v -> v - 1 for
v in 1..150; any other value is an error naming the file. Class names and palette are those of
MMSegmentation's `ADE20KDataset` (its "bed " written without the trailing space).

Splits: `training` (default train split) and `validation` (default eval split); stems are the file
stems (`ADE_train_00000001`). Transforms: short side resized to 512 (aspect kept), random
512x512 crop for training, short side 512 for evaluation.
"""

from __future__ import annotations

from pathlib import Path

from bench.core.errors import UserError
from transfer.datasets.base import register_dataset
from transfer.datasets.base import (IGNORE_INDEX, LabelMapping, Sample, SegmentationDataset, Transforms,
                                    pair_by_stem, read_index_png, require_dir)

FOLDER = "ADEChallengeData2016"

# Ten names per row, separated by ";" because some hold spaces; train id i is raw value i + 1.
_NAMES = """
    wall; building; sky; floor; tree; ceiling; road; bed; windowpane; grass
    cabinet; sidewalk; person; earth; door; table; mountain; plant; curtain; chair
    car; water; painting; sofa; shelf; house; sea; mirror; rug; field
    armchair; seat; fence; desk; rock; wardrobe; lamp; bathtub; railing; cushion
    base; box; column; signboard; chest of drawers; counter; sand; sink; skyscraper; fireplace
    refrigerator; grandstand; path; stairs; runway; case; pool table; pillow; screen door; stairway
    river; bridge; bookcase; blind; coffee table; toilet; flower; book; hill; bench
    countertop; stove; palm; kitchen island; computer; swivel chair; boat; bar; arcade machine; hovel
    bus; towel; light; truck; tower; chandelier; awning; streetlight; booth; television receiver
    airplane; dirt track; apparel; pole; land; bannister; escalator; ottoman; bottle; buffet
    poster; stage; van; ship; fountain; conveyer belt; canopy; washer; plaything; swimming pool
    stool; barrel; basket; waterfall; tent; bag; minibike; cradle; oven; ball
    food; step; tank; trade name; microwave; pot; animal; bicycle; lake; dishwasher
    screen; blanket; sculpture; hood; sconce; vase; traffic light; tray; ashcan; fan
    pier; crt screen; plate; monitor; bulletin board; shower; radiator; glass; clock; flag
"""
# RRGGBB per train id, ten per row (ids 0-9, 10-19, ...).
_COLOURS = """
    787878 b47878 06e6e6 503232 04c803 787850 8c8c8c cc05ff e6e6e6 04fa07
    e005ff ebff07 96053d 787846 08ff33 ff0652 8fff8c ccff04 ff3307 cc4603
    0066c8 3de6fa ff0633 0b66ff ff0747 ff09e0 0907e6 dcdcdc ff095c 7009ff
    08ffd6 07ffe0 ffb806 0aff47 ff290a 07ffff e0ff08 6608ff ff3d06 ffc207
    ff7a08 00ff14 ff0829 ff0599 0633ff eb0cff a09614 00a3ff 8c8c8c fa0a0f
    14ff00 1fff00 ff1f00 ffe000 99ff00 0000ff ff4700 00ebff 00adff 1f00ff
    0bc8c8 ff5200 00fff5 003dff 00ff70 00ff85 ff0000 ffa300 ff6600 c2ff00
    008fff 33ff00 0052ff 00ff29 00ffad 0a00ff adff00 00ff99 ff5c00 ff00ff
    ff00f5 ff0066 ffad00 ff0014 ffb8b8 001fff 00ff3d 0047ff ff00cc 00ffc2
    00ff52 000aff 0070ff 3300ff 00c2ff 007aff 00ffa3 ff9900 00ff0a ff7000
    8fff00 5200ff a3ff00 ffeb00 08b8aa 8500ff 00ff5c b800ff ff001f 00b8ff
    00d6ff ff0070 5cff00 00e0ff 70e0ff 46b8a0 a300ff 9900ff 47ff00 ff00a3
    ffcc00 ff008f 00ffeb 85ff00 ff00eb f500ff ff007a fff500 0abed4 d6ff00
    00ccff 1400ff ffff00 0099ff 0029ff 00ffcc 2900ff 29ff00 ad00ff 00f5ff
    4700ff 7a00ff 00ffb8 005cff b8ff00 0085ff ffd600 19c2c2 66ff00 5c00ff
"""

CLASS_NAMES = tuple(n.strip() for row in _NAMES.strip().splitlines() for n in row.split(";"))
PALETTE = tuple(tuple(int(h[i:i + 2], 16) for i in (0, 2, 4)) for h in _COLOURS.split())
assert len(CLASS_NAMES) == len(PALETTE) == 150

# 0 is "other": not one of the 150 scored classes.
MAPPING = LabelMapping({0: IGNORE_INDEX, **{v: v - 1 for v in range(1, 151)}})


@register_dataset
class ADE20K(SegmentationDataset):
    name = "ade20k"
    validation_size = 500  # of the 20,210 training images
    description = "ADE20K SceneParsing (ADEChallengeData2016), 150 classes"
    splits = ("training", "validation")
    train_split, eval_split = "training", "validation"
    transforms = Transforms(resize=512, crop=(512, 512), eval_resize=512)
    class_names = CLASS_NAMES
    palette = PALETTE

    def __init__(self, root, classes=None):
        super().__init__(root, classes)
        self.base = _find_base(self.root)

    def samples(self, split: str) -> list[Sample]:
        self.check_split(split)
        image_dir = require_dir(self.base / "images" / split, f"ADE20K {split} images")
        label_dir = require_dir(self.base / "annotations" / split, f"ADE20K {split} annotations")
        images = {p.stem: p for p in image_dir.iterdir() if p.suffix == ".jpg" and p.is_file()}
        if not images:
            raise UserError(f"{image_dir}: no .jpg images; unzip {FOLDER}.zip here")
        labels = {p.stem: p for p in label_dir.iterdir() if p.suffix == ".png"}
        return pair_by_stem(images, labels, f"annotations/{split}/<stem>.png")

    def read_label(self, sample: Sample):
        return MAPPING(read_index_png(sample.label), sample.label)


def _find_base(root: Path) -> Path:
    for base in (root, root / FOLDER):
        if (base / "images").is_dir() and (base / "annotations").is_dir():
            return base
    raise UserError(f"{root}: not an ADE20K root; expected images/ and annotations/ here or in "
                    f"{root / FOLDER} (unzip {FOLDER}.zip from http://data.csail.mit.edu/places/ADEchallenge/)")
