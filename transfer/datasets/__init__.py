"""Segmentation datasets in their official on-disk layouts, behind one registry.

    @register_dataset
    class Cityscapes(SegmentationDataset):
        name = "cityscapes"
        ...

`open_dataset(name, root, classes=None)` returns a dataset bound to a folder; `list_datasets()`
gives the registered names (the CLI and manifest values). The modules below register on import.
"""

from __future__ import annotations

import importlib
import pkgutil

from transfer.datasets.base import (IGNORE_INDEX, DATASETS, LabelMapping, Sample, SegmentationDataset,  # noqa: F401
                                    Transforms, dataset_class, list_datasets, open_dataset, register_dataset)

# Every module of this package but the shared ones registers one dataset on import, so adding a
# dataset is adding a file (as for methods, sources and decoders).
SHARED = {"base", "cityscapes_labels", "inspection"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in SHARED:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["IGNORE_INDEX", "LabelMapping", "Sample", "SegmentationDataset", "Transforms", "dataset_class",
           "list_datasets", "open_dataset", "register_dataset"]
