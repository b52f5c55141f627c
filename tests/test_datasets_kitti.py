from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from fixtures import one_line_error as _error
from fixtures.kitti import build_kitti, build_kitti_200
from PIL import Image

from transfer.datasets import open_dataset
from transfer.datasets.base import Transforms
from transfer.datasets.inspection import inspect_split
from transfer.datasets.kitti import Kitti

NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
         "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
# Cityscapes labelId -> trainId of the evaluated classes; every other id 0..33 is ignored.
EVALUATED = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
             27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


@pytest.fixture()
def built(tmp_path):
    root = tmp_path / "kitti"
    return root, build_kitti(root)




def test_inspect_matches_hand_counts(built):
    root, expected = built
    report = inspect_split(open_dataset("kitti", root), "training")
    assert report["num_images"] == 3
    assert report["num_classes"] == 19 and report["class_names"] == list(NAMES)
    assert report["class_pixels"] == [expected["class_pixels"].get(name, 0) for name in NAMES]
    assert report["ignore_pixels"] == expected["ignore_pixels"]


def test_mapping_class_by_class(built):
    root, _ = built
    ds = Kitti(root)
    sample = next(s for s in ds.samples("training") if s.stem == "000001_10")
    label = ds.read_label(sample)
    assert label.shape == (4, 13) and label.dtype == np.uint8
    assert list(label.ravel()[:34]) == [EVALUATED.get(i, 255) for i in range(34)]
    assert list(label.ravel()[34:]) == [1] * 18


def test_stems_splits_and_sizes(built):
    root, expected = built
    ds = Kitti(root)
    assert ds.splits == ("training",) and ds.class_names == NAMES and len(ds.palette) == 19
    samples = ds.samples("training")
    assert [s.stem for s in samples] == expected["stems"]
    assert [ds.read_image(s).shape for s in samples] == [(4, 12, 3), (4, 13, 3), (5, 12, 3)]
    assert samples[0].label == root / "training" / "semantic" / "000000_10.png"


def test_parent_of_data_semantics_is_accepted(tmp_path):
    expected = build_kitti(tmp_path / "data_semantics")
    ds = Kitti(tmp_path)
    assert ds.root == tmp_path / "data_semantics"
    assert [s.stem for s in ds.samples("training")] == expected["stems"]


def test_fixed_evaluation_split(tmp_path):
    build_kitti_200(tmp_path)
    ds = Kitti(tmp_path)
    pool, evaluation = ds.transfer_pools()
    assert (len(pool), len(evaluation)) == (150, 50)
    assert [s.stem for s in evaluation[:3]] == ["000003_10", "000007_10", "000011_10"]
    assert evaluation[-1].stem == "000199_10"
    assert [s.stem for s in pool[:5]] == ["000000_10", "000001_10", "000002_10", "000004_10", "000005_10"]
    assert not {s.stem for s in pool} & {s.stem for s in evaluation}
    assert ds.transfer_pools("training", "training") == (pool, evaluation)
    assert "val" in _error(ds.transfer_pools, eval_split="val")
    assert "testing" in _error(ds.transfer_pools, train_split="testing")
    # A missing frame does not shift the evaluation set: the rule reads frame numbers.
    for folder in ("image_2", "semantic"):
        (ds.root / "training" / folder / "000001_10.png").unlink()
    pool2, evaluation2 = Kitti(ds.root).transfer_pools()
    assert evaluation2 == evaluation and len(pool2) == 149


def test_too_few_images_for_evaluation(built):
    root, _ = built
    assert str(root / "training" / "image_2") in _error(Kitti(root).transfer_pools)


def test_testing_split_is_refused(built):
    root, _ = built
    assert "public" in _error(Kitti(root).samples, "testing")
    assert "training" in _error(Kitti(root).samples, "train")


def test_transforms_match_docstring():
    assert Kitti.transforms == Transforms(resize=(192, 640), crop=None, eval_resize=(192, 640))
    doc = " ".join(sys.modules[Kitti.__module__].__doc__.split())
    assert "resize (192, 640), crop None, eval_resize (192, 640)" in doc
    assert "N % 4 == 3" in doc


def test_wrong_root(tmp_path):
    (tmp_path / "image_2").mkdir()
    message = _error(Kitti, tmp_path)
    assert str(tmp_path) in message and "training/" in message
    assert str(tmp_path / "nope") in _error(Kitti, tmp_path / "nope")


def test_missing_label_folder(built):
    root, _ = built
    shutil.rmtree(root / "training" / "semantic")
    assert str(root / "training" / "semantic") in _error(Kitti(root).samples, "training")


def test_image_without_label(built):
    root, _ = built
    (root / "training" / "semantic" / "000002_10.png").unlink()
    assert str(root / "training" / "image_2" / "000002_10.png") in _error(Kitti(root).samples, "training")


def test_label_value_outside_mapping(built):
    root, _ = built
    path = root / "training" / "semantic" / "000002_10.png"
    array = np.asarray(Image.open(path)).copy()
    array[1, 1] = 40
    Image.fromarray(array).save(path)
    message = _error(inspect_split, Kitti(root), "training")
    assert str(path) in message and "40" in message


def test_colour_label_refused(built):
    root, _ = built
    path = root / "training" / "semantic" / "000000_10.png"
    shutil.copy(root / "training" / "semantic_rgb" / "000000_10.png", path)
    assert str(path) in _error(inspect_split, Kitti(root), "training")


@pytest.mark.parametrize("folder", ["semantic", "image_2"])
def test_corrupt_file(built, folder):
    root, _ = built
    path = root / "training" / folder / "000001_10.png"
    path.write_bytes(b"\x89PNG garbage, not an image")
    assert str(path) in _error(inspect_split, Kitti(root), "training")
