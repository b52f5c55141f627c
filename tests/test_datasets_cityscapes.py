from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from fixtures import one_line_error as _error
from fixtures.cityscapes import build_cityscapes
from PIL import Image

from transfer.datasets import open_dataset
from transfer.datasets.base import Transforms
from transfer.datasets.cityscapes import Cityscapes
from transfer.datasets.cityscapes_labels import LABEL_ID_TO_TRAIN_ID, LABELS, TRAIN_NAMES, TRAIN_PALETTE
from transfer.datasets.inspection import inspect_split

NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
         "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
# labelId -> trainId of the evaluated classes (cityscapesScripts); every other id 0..33 is ignored.
EVALUATED = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
             27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


@pytest.fixture()
def built(tmp_path):
    root = tmp_path / "cityscapes"
    return root, build_cityscapes(root)




def test_label_table_matches_cityscapesscripts():
    from cityscapesscripts.helpers.labels import labels

    assert len(LABELS) == len(labels) == 35
    for ours, official in zip(LABELS, labels):
        assert (ours.id, ours.name, ours.train_id, ours.color) == (official.id, official.name, official.trainId,
                                                                   official.color)


def test_train_classes_and_palette():
    from cityscapesscripts.helpers.labels import trainId2label

    assert TRAIN_NAMES == NAMES
    assert TRAIN_PALETTE == tuple(trainId2label[i].color for i in range(19))
    assert TRAIN_PALETTE[0] == (128, 64, 128) and TRAIN_PALETTE[18] == (119, 11, 32)
    assert Cityscapes.class_names == NAMES and len(Cityscapes.palette) == 19


def test_mapping_class_by_class(built):
    root, _ = built
    assert set(LABEL_ID_TO_TRAIN_ID) == set(range(34))
    for label_id in range(34):
        assert LABEL_ID_TO_TRAIN_ID[label_id] == EVALUATED.get(label_id, 255), label_id
    # The fixture frame holding every id 0..33 once, read through the dataset.
    ds = Cityscapes(root)
    sample = next(s for s in ds.samples("train") if s.stem == "bochum_000000_000313")
    label = ds.read_label(sample).ravel()
    assert label.dtype == np.uint8
    assert list(label[:34]) == [EVALUATED.get(i, 255) for i in range(34)]
    assert list(label[34:]) == [0] * 6


@pytest.mark.parametrize("split", ["train", "val"])
def test_inspect_matches_hand_counts(built, split):
    root, expected = built
    report = inspect_split(open_dataset("cityscapes", root), split)
    want = expected[split]
    assert report["num_images"] == len(want["stems"])
    assert report["num_classes"] == 19 and report["class_names"] == list(NAMES)
    assert report["class_pixels"] == [want["class_pixels"].get(name, 0) for name in NAMES]
    assert report["ignore_pixels"] == want["ignore_pixels"]


def test_stems_splits_and_label_files(built):
    root, expected = built
    ds = Cityscapes(root)
    assert ds.splits == ("train", "val") and (ds.train_split, ds.eval_split) == ("train", "val")
    for split in ("train", "val"):
        samples = ds.samples(split)
        assert [s.stem for s in samples] == expected[split]["stems"]
        for s in samples:
            assert s.image.name == f"{s.stem}_leftImg8bit.png"
    by_stem = {s.stem: s for s in ds.samples("val")}
    assert by_stem["frankfurt_000000_000294"].label.name.endswith("_gtFine_labelTrainIds.png")
    assert by_stem["lindau_000000_000019"].label.name.endswith("_gtFine_labelIds.png")
    assert ds.read_image(by_stem["lindau_000000_000019"]).shape == (5, 8, 3)
    pool, evaluation = ds.transfer_pools()
    assert [s.stem for s in pool] == expected["train"]["stems"]
    assert [s.stem for s in evaluation] == expected["val"]["stems"]


def test_test_split_is_refused(built):
    root, _ = built
    assert "public" in _error(Cityscapes(root).samples, "test")
    assert "train, val" in _error(Cityscapes(root).samples, "train_extra")


def test_transforms_match_docstring():
    assert Cityscapes.transforms == Transforms(resize=None, crop=(512, 1024), eval_resize=None)
    doc = " ".join(sys.modules[Cityscapes.__module__].__doc__.split())
    assert "resize None, crop (512, 1024), eval_resize None" in doc


def test_wrong_root(tmp_path):
    (tmp_path / "gtFine").mkdir()
    message = _error(Cityscapes, tmp_path)
    assert str(tmp_path) in message and "leftImg8bit/" in message
    assert str(tmp_path / "nope") in _error(Cityscapes, tmp_path / "nope")


def test_missing_split_folder(built):
    root, _ = built
    shutil.rmtree(root / "gtFine" / "val")
    assert str(root / "gtFine" / "val") in _error(Cityscapes(root).samples, "val")


def test_image_without_label(built):
    root, _ = built
    (root / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png").unlink()
    message = _error(Cityscapes(root).samples, "train")
    assert str(root / "leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png") in message


def test_empty_split(built):
    root, _ = built
    shutil.rmtree(root / "leftImg8bit" / "val")
    (root / "leftImg8bit" / "val" / "lindau").mkdir(parents=True)
    assert str(root / "leftImg8bit" / "val") in _error(Cityscapes(root).samples, "val")


@pytest.mark.parametrize("name, value", [("lindau_000000_000019_gtFine_labelIds.png", 34),
                                         ("frankfurt_000000_000294_gtFine_labelTrainIds.png", 19)])
def test_label_value_outside_mapping(built, name, value):
    root, _ = built
    path = next((root / "gtFine" / "val").glob(f"*/{name}"))
    array = np.asarray(Image.open(path)).copy()
    array[2, 3] = value
    Image.fromarray(array).save(path)
    message = _error(inspect_split, Cityscapes(root), "val")
    assert str(path) in message and str(value) in message


def test_colour_label_refused(built):
    root, _ = built
    path = root / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    Image.fromarray(np.zeros((5, 8, 3), np.uint8)).save(path)
    assert str(path) in _error(inspect_split, Cityscapes(root), "val")


@pytest.mark.parametrize("relative", ["gtFine/train/bochum/bochum_000000_000313_gtFine_labelIds.png",
                                      "leftImg8bit/train/bochum/bochum_000000_000313_leftImg8bit.png"])
def test_corrupt_file(built, relative):
    root, _ = built
    (root / relative).write_bytes(b"\x89PNG garbage, not an image")
    assert str(root / relative) in _error(inspect_split, Cityscapes(root), "train")
