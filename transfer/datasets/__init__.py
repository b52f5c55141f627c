"""Segmentation datasets in their official on-disk layouts, behind one registry.

    @register_dataset
    class Cityscapes(SegmentationDataset):
        name = "cityscapes"
        ...

`open_dataset(name, root, classes=None)` returns a dataset bound to a folder; `list_datasets()`
gives the registered names (the CLI and manifest values). The modules below register on import.
"""

from __future__ import annotations

from bench.registry import Registry
from transfer.datasets.base import IGNORE_INDEX, LabelMapping, Sample, SegmentationDataset, Transforms

DATASETS: Registry[SegmentationDataset] = Registry("dataset")
register_dataset = DATASETS.register
list_datasets = DATASETS.names
dataset_class = DATASETS.get


def open_dataset(name: str, root, classes: int | None = None) -> SegmentationDataset:
    return dataset_class(name)(root, classes=classes)


# Registration happens on import; keep this list in the README's dataset table order.
from transfer.datasets import synth  # noqa: E402,F401
from transfer.datasets import kitti  # noqa: E402,F401
from transfer.datasets import cityscapes  # noqa: E402,F401
from transfer.datasets import nyuv2  # noqa: E402,F401
from transfer.datasets import ade20k  # noqa: E402,F401
from transfer.datasets import voc  # noqa: E402,F401

__all__ = ["IGNORE_INDEX", "LabelMapping", "Sample", "SegmentationDataset", "Transforms", "dataset_class",
           "list_datasets", "open_dataset", "register_dataset"]
