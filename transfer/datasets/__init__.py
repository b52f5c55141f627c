"""Segmentation datasets in their official on-disk layouts, behind one registry.

    @register_dataset
    class Cityscapes(SegmentationDataset):
        name = "cityscapes"
        ...

`open_dataset(name, root, classes=None)` returns a dataset bound to a folder; `list_datasets()`
gives the registered names (the CLI and manifest values). The modules below register on import.
"""

from __future__ import annotations

from transfer.datasets.base import (IGNORE_INDEX, DATASETS, LabelMapping, Sample, SegmentationDataset,  # noqa: F401
                                    Transforms, dataset_class, list_datasets, open_dataset, register_dataset)

# Registration happens on import; keep this list in the README's dataset table order.
from transfer.datasets import synth  # noqa: E402,F401
from transfer.datasets import kitti  # noqa: E402,F401
from transfer.datasets import cityscapes  # noqa: E402,F401
from transfer.datasets import nyuv2  # noqa: E402,F401
from transfer.datasets import ade20k  # noqa: E402,F401
from transfer.datasets import voc  # noqa: E402,F401

__all__ = ["IGNORE_INDEX", "LabelMapping", "Sample", "SegmentationDataset", "Transforms", "dataset_class",
           "list_datasets", "open_dataset", "register_dataset"]
