"""nyuv2: layout, label mapping (40 and 13 classes), splits, and errors on a tiny v7.3 fixture."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import scipy.io
from fixtures.nyuv2 import H, NAMES_13, NAMES_40, PAINT, W, build_nyuv2, image, map_class

from bench.core.errors import UserError
from transfer.datasets import list_datasets, open_dataset
from transfer.datasets import nyuv2 as module
from transfer.datasets.base import Sample, Transforms
from transfer.datasets.inspection import inspect_split

# The 40 -> 13 table by name (howard-mahe/nyudv2_class_mapping README, from class13Mapping.mat of
# ankurhanda/nyuv2-meta-data), written out independently of the module's numeric table.
OFFICIAL_40_TO_13 = {
    "wall": "wall", "floor": "floor", "cabinet": "furniture", "bed": "bed", "chair": "chair", "sofa": "sofa",
    "table": "table", "door": "wall", "window": "window", "bookshelf": "furniture", "picture": "picture",
    "counter": "furniture", "blinds": "window", "desk": "table", "shelves": "furniture", "curtain": "window",
    "dresser": "furniture", "pillow": "objects", "mirror": "objects", "floor mat": "floor", "clothes": "objects",
    "ceiling": "ceiling", "books": "books", "refridgerator": "furniture", "television": "tv", "paper": "objects",
    "towel": "objects", "shower curtain": "objects", "box": "objects", "whiteboard": "objects",
    "person": "objects", "night stand": "furniture", "toilet": "objects", "sink": "objects", "lamp": "objects",
    "bathtub": "objects", "bag": "objects", "otherstructure": "objects", "otherfurniture": "furniture",
    "otherprop": "objects",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("nyu") / "nyuv2"
    return root, build_nyuv2(root)


@pytest.fixture
def fresh(tmp_path):
    """A private copy to damage."""
    root = tmp_path / "nyuv2"
    build_nyuv2(root)
    return root


def _error(root, classes=None, *, read=False) -> str:
    with pytest.raises(UserError) as info:
        ds = open_dataset("nyuv2", root, classes)
        if read:
            for split in ds.splits:
                inspect_split(ds, split)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- counts, stems, reading -------------------------------------------------------------------------

@pytest.mark.parametrize("classes", [None, 40, 13])
@pytest.mark.parametrize("split", ["train", "test"])
def test_inspect_matches_hand_counts(built, classes, split):
    root, expected = built
    got = inspect_split(open_dataset("nyuv2", root, classes), split)
    assert {k: got[k] for k in expected[classes or 40][split]} == expected[classes or 40][split]
    assert got["dataset"] == "nyuv2" and got["split"] == split


def test_meta_files_saved_as_v73_read_the_same(tmp_path, built):
    root, expected = built
    other = tmp_path / "nyu73"
    build_nyuv2(other, v73_meta=True)
    assert scipy.io.matlab.matfile_version(other / "splits.mat")[0] == 2  # really HDF5
    for classes in (40, 13):
        for split in ("train", "test"):
            got = inspect_split(open_dataset("nyuv2", other, classes), split)
            assert got["class_pixels"] == expected[classes][split]["class_pixels"]
            assert got["class_names"] == expected[classes][split]["class_names"]


def test_stems_splits_and_defaults(built):
    root, _ = built
    ds = open_dataset("nyuv2", root)
    assert "nyuv2" in list_datasets()
    assert ds.splits == ("train", "test") and (ds.train_split, ds.eval_split) == ("train", "test")
    assert [(s.stem, s.image, s.label) for s in ds.samples("train")] == [("0001", 0, 0), ("0003", 2, 2),
                                                                          ("0004", 3, 3)]
    assert [s.stem for s in ds.samples("test")] == ["0002", "0006"]  # image 5 is in no split
    train, evaluation = ds.transfer_pools()
    assert len(train) == 3 and len(evaluation) == 2
    with pytest.raises(UserError, match="val"):
        ds.samples("val")


def test_transforms_are_the_documented_native_resolution():
    assert module.NYUv2.transforms == Transforms(resize=None, crop=None, eval_resize=None)
    assert "resize None, crop None, eval_resize None" in module.__doc__
    assert "480x640" in module.__doc__


def test_read_image_and_label_are_h_by_w(built):
    root, _ = built
    ds = open_dataset("nyuv2", root)
    for sample in ds.samples("train") + ds.samples("test"):
        img = ds.read_image(sample)
        assert img.shape == (H, W, 3) and img.dtype == np.uint8
        np.testing.assert_array_equal(img, image(int(sample.stem)))
    label = ds.read_label(ds.samples("train")[0])  # image 1: a row of unlabelled, then wall ...
    assert label.shape == (H, W) and label.dtype == np.uint8
    assert (label[0] == 255).all() and (label[1:3] == 0).all() and (label[-1] == 13).all()  # desk


def test_pickled_dataset_reopens_its_file(built):
    root, _ = built
    ds = open_dataset("nyuv2", root)
    ds.read_label(ds.samples("test")[0])
    copy = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(copy.read_label(copy.samples("test")[0]), ds.read_label(ds.samples("test")[0]))


# --- label mapping ----------------------------------------------------------------------------------

def test_40_classes_follow_mapclass_class_by_class(built):
    root, _ = built
    ds = open_dataset("nyuv2", root)
    assert ds.class_names == NAMES_40 and ds.num_classes == 40
    flat = ds.read_label(Sample("0004", 3, 3)).ravel()  # raw 41+k -> mapClass k+1, one pixel each
    assert flat[:40].tolist() == list(range(40)) and (flat[40:] == 255).all()
    # Raw labels 1..40 are reversed by the fixture's mapClass, so identity would be caught.
    assert map_class()[0] == 40
    flat = ds.read_label(Sample("0003", 2, 2)).ravel()
    assert (flat[-16:] == NAMES_40.index("otherprop")).all()


def test_13_classes_follow_the_official_table_class_by_class(built):
    root, _ = built
    ds = open_dataset("nyuv2", root, classes=13)
    assert ds.class_names == NAMES_13 == module.NAMES_13 and ds.num_classes == 13
    flat = ds.read_label(Sample("0004", 3, 3)).ravel()
    for k, name40 in enumerate(NAMES_40):
        assert NAMES_13[flat[k]] == OFFICIAL_40_TO_13[name40], name40
    assert (flat[40:] == 255).all()


@pytest.mark.parametrize("classes", [40, 13])
def test_palette_is_distinct_rgb(built, classes):
    root, _ = built
    ds = open_dataset("nyuv2", root, classes)
    assert len(ds.palette) == classes == len(set(ds.palette))
    assert all(len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in ds.palette)
    assert (0, 0, 0) not in ds.palette


@pytest.mark.parametrize("classes", [12, 20, 0, "13", True])
def test_other_class_counts_are_refused(built, classes):
    root, _ = built
    assert "one of 40, 13" in _error(root, classes)


# --- errors naming the file -------------------------------------------------------------------------

def test_wrong_root(tmp_path, built):
    assert "nowhere" in _error(tmp_path / "nowhere")
    root, _ = built
    message = _error(root.parent)  # one level too high
    assert str(root.parent / "nyu_depth_v2_labeled.mat") in message


@pytest.mark.parametrize("name", ["nyu_depth_v2_labeled.mat", "splits.mat", "classMapping40.mat"])
def test_missing_mat_file(fresh, name):
    (fresh / name).unlink()
    assert str(fresh / name) in _error(fresh)


@pytest.mark.parametrize("name", ["nyu_depth_v2_labeled.mat", "splits.mat", "classMapping40.mat"])
def test_corrupt_mat_file(fresh, name):
    (fresh / name).write_bytes(b"\x89garbage, not a MATLAB file" * 20)
    message = _error(fresh)
    assert str(fresh / name) in message and "unreadable" in message


@pytest.mark.parametrize("name, var, keep", [
    ("splits.mat", "testNdxs", {"trainNdxs": np.array([[1.0]])}),
    ("classMapping40.mat", "className", {"mapClass": np.ones((1, 894))}),
    ("classMapping40.mat", "mapClass", {"className": np.array(NAMES_40, dtype=object).reshape(1, -1)}),
])
def test_missing_variable(fresh, name, var, keep):
    scipy.io.savemat(fresh / name, keep)
    message = _error(fresh)
    assert str(fresh / name) in message and var in message


def test_labelled_file_without_labels(fresh):
    with h5py.File(fresh / "nyu_depth_v2_labeled.mat", "r+") as f:
        del f["labels"]
    message = _error(fresh)
    assert str(fresh / "nyu_depth_v2_labeled.mat") in message and "labels" in message


@pytest.mark.parametrize("bad", [0, 7])
def test_split_index_outside_the_labelled_file(fresh, bad):
    scipy.io.savemat(fresh / "splits.mat", {"trainNdxs": np.array([[1.0], [bad]]), "testNdxs": np.array([[2.0]])})
    message = _error(fresh)
    assert str(fresh / "splits.mat") in message and "trainNdxs" in message and str(bad) in message


def test_split_listing_an_image_twice(fresh):
    scipy.io.savemat(fresh / "splits.mat", {"trainNdxs": np.array([[1.0], [1.0]]), "testNdxs": np.array([[2.0]])})
    assert str(fresh / "splits.mat") in _error(fresh)


def test_mapclass_outside_40_classes(fresh):
    bad = map_class().astype(float).reshape(1, -1)
    bad[0, 5] = 41
    scipy.io.savemat(fresh / "classMapping40.mat",
                     {"mapClass": bad, "className": np.array(NAMES_40, dtype=object).reshape(1, -1)})
    message = _error(fresh)
    assert str(fresh / "classMapping40.mat") in message and "mapClass" in message


def test_raw_label_beyond_894(fresh):
    with h5py.File(fresh / "nyu_depth_v2_labeled.mat", "r+") as f:
        f["labels"][5, 3, 2] = 900  # image 6, x=3, y=2 in MATLAB's column-major view
    message = _error(fresh, read=True)
    assert str(fresh / "nyu_depth_v2_labeled.mat") in message and "0006" in message and "900" in message


def test_raw_label_beyond_a_short_mapclass(fresh):
    scipy.io.savemat(fresh / "classMapping40.mat", {"mapClass": map_class()[:100].astype(float).reshape(1, -1),
                                                     "className": np.array(NAMES_40, dtype=object).reshape(1, -1)})
    assert PAINT[1][-1][0] == 894  # image 1 uses raw 894, which the short table lacks
    message = _error(fresh, read=True)
    assert str(fresh / "nyu_depth_v2_labeled.mat") in message and "0001" in message and "894" in message
