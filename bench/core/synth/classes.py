"""Class table of the generated world (kept in its own module so scene/render/writer can import
it without importing the package `__init__`, which re-exports everything)."""

from __future__ import annotations

CLASSES = ("road", "sidewalk", "building", "pole", "vegetation", "car", "sky")
ROAD, SIDEWALK, BUILDING, POLE, VEGETATION, CAR, SKY = range(len(CLASSES))

# Cityscapes colours for the same classes, so label visualisations look familiar.
PALETTE = [
    [128, 64, 128],   # road
    [244, 35, 232],   # sidewalk
    [70, 70, 70],     # building
    [153, 153, 153],  # pole
    [107, 142, 35],   # vegetation
    [0, 0, 142],      # car
    [70, 130, 180],   # sky
]

IGNORE_INDEX = 255
# Depth cap (KITTI convention): sky and anything farther is stored as exactly MAX_DEPTH.
MAX_DEPTH = 80.0
BASELINE = 0.54  # KITTI stereo baseline, metres
