"""The official Cityscapes label table (cityscapesScripts `helpers/labels.py`), shared by
`cityscapes` and `kitti` (KITTI's semantic labels use the same ids).

`LABELS` holds every row: id, name, trainId, colour. `TRAIN_NAMES` / `TRAIN_PALETTE` are the 19
evaluated classes in trainId order, and `LABEL_ID_TO_TRAIN_ID` maps the ids a `*_labelIds.png`
may contain (0..33) to train ids, with the unevaluated ones (trainId 255) to 255 = ignore.
"""

from __future__ import annotations

from typing import NamedTuple

from transfer.datasets.base import IGNORE_INDEX


class CityscapesLabel(NamedTuple):
    id: int
    name: str
    train_id: int
    color: tuple[int, int, int]


LABELS: tuple[CityscapesLabel, ...] = tuple(CityscapesLabel(*row) for row in (
    (0, "unlabeled", 255, (0, 0, 0)),
    (1, "ego vehicle", 255, (0, 0, 0)),
    (2, "rectification border", 255, (0, 0, 0)),
    (3, "out of roi", 255, (0, 0, 0)),
    (4, "static", 255, (0, 0, 0)),
    (5, "dynamic", 255, (111, 74, 0)),
    (6, "ground", 255, (81, 0, 81)),
    (7, "road", 0, (128, 64, 128)),
    (8, "sidewalk", 1, (244, 35, 232)),
    (9, "parking", 255, (250, 170, 160)),
    (10, "rail track", 255, (230, 150, 140)),
    (11, "building", 2, (70, 70, 70)),
    (12, "wall", 3, (102, 102, 156)),
    (13, "fence", 4, (190, 153, 153)),
    (14, "guard rail", 255, (180, 165, 180)),
    (15, "bridge", 255, (150, 100, 100)),
    (16, "tunnel", 255, (150, 120, 90)),
    (17, "pole", 5, (153, 153, 153)),
    (18, "polegroup", 255, (153, 153, 153)),
    (19, "traffic light", 6, (250, 170, 30)),
    (20, "traffic sign", 7, (220, 220, 0)),
    (21, "vegetation", 8, (107, 142, 35)),
    (22, "terrain", 9, (152, 251, 152)),
    (23, "sky", 10, (70, 130, 180)),
    (24, "person", 11, (220, 20, 60)),
    (25, "rider", 12, (255, 0, 0)),
    (26, "car", 13, (0, 0, 142)),
    (27, "truck", 14, (0, 0, 70)),
    (28, "bus", 15, (0, 60, 100)),
    (29, "caravan", 255, (0, 0, 90)),
    (30, "trailer", 255, (0, 0, 110)),
    (31, "train", 16, (0, 80, 100)),
    (32, "motorcycle", 17, (0, 0, 230)),
    (33, "bicycle", 18, (119, 11, 32)),
    # Only exists in the polygons; label images never contain it.
    (-1, "license plate", -1, (0, 0, 142)),
))

_EVALUATED = sorted((row for row in LABELS if 0 <= row.train_id != IGNORE_INDEX), key=lambda row: row.train_id)
TRAIN_NAMES: tuple[str, ...] = tuple(row.name for row in _EVALUATED)
TRAIN_PALETTE: tuple[tuple[int, int, int], ...] = tuple(row.color for row in _EVALUATED)

LABEL_ID_TO_TRAIN_ID: dict[int, int] = {row.id: row.train_id for row in LABELS if row.id >= 0}
# What cityscapesScripts' createTrainIdLabelImgs writes into `*_labelTrainIds.png`.
TRAIN_ID_TO_TRAIN_ID: dict[int, int] = {**{i: i for i in range(len(TRAIN_NAMES))}, IGNORE_INDEX: IGNORE_INDEX}
