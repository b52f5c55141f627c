"""voc: layout, root resolution, split lists, trainaug, palette indices, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bench.core.errors import UserError
from fixtures.voc import AUG_LISTS, build_voc, write_jpg, write_png
from transfer.datasets import open_dataset
from transfer.datasets.base import Transforms
from transfer.datasets.inspection import inspect_split
from transfer.datasets.voc import VOC, voc_colour


@pytest.fixture
def voc(tmp_path):
    expected = build_voc(tmp_path)
    return tmp_path / "VOCdevkit" / "VOC2012", expected


def _one_line_naming(exc: pytest.ExceptionInfo, path) -> str:
    message = str(exc.value)
    assert "\n" not in message
    assert str(path) in message, message
    return message


@pytest.mark.parametrize("split", ["train", "val", "trainval"])
def test_inspect_counts_match_hand_built_labels(voc, split):
    base, expected = voc
    report = inspect_split(open_dataset("voc", base), split)
    assert report["num_images"] == len(expected[split]["stems"])
    assert report["class_names"] == list(VOC.class_names)
    assert report["class_pixels"] == expected[split]["class_pixels"]
    assert report["ignore_pixels"] == expected[split]["ignore_pixels"]


def test_stems_come_from_the_lists_and_decoys_are_ignored(voc):
    base, expected = voc
    dataset = VOC(base)
    for split in ("train", "val", "trainval"):
        samples = dataset.samples(split)
        assert [s.stem for s in samples] == expected[split]["stems"]
        assert all(s.label.parent == base / "SegmentationClass" for s in samples)
    train, evaluation = dataset.transfer_pools()
    assert [s.stem for s in train] == expected["train"]["stems"]
    assert [s.stem for s in evaluation] == expected["val"]["stems"]


@pytest.mark.parametrize("levels_up", [0, 1, 2])
def test_root_is_voc2012_vocdevkit_or_its_parent(voc, levels_up):
    base, expected = voc
    root = base
    for _ in range(levels_up):
        root = root.parent
    dataset = VOC(root)
    assert dataset.base == base
    assert [s.stem for s in dataset.samples("val")] == expected["val"]["stems"]


def test_voc2012_three_levels_down_is_not_found(tmp_path):
    build_voc(tmp_path / "data")
    with pytest.raises(UserError) as exc:
        VOC(tmp_path)
    assert "VOC2012" in _one_line_naming(exc, tmp_path)


def test_wrong_root_and_ambiguous_root(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as exc:
        VOC(tmp_path / "empty")
    message = _one_line_naming(exc, tmp_path / "empty")
    assert "JPEGImages" in message and "VOC2012" in message
    hollow = tmp_path / "hollow" / "VOC2012"
    hollow.mkdir(parents=True)
    with pytest.raises(UserError) as exc:
        VOC(tmp_path / "hollow")
    _one_line_naming(exc, hollow)
    build_voc(tmp_path / "two")
    (tmp_path / "two" / "backup" / "VOC2012").mkdir(parents=True)
    with pytest.raises(UserError) as exc:
        VOC(tmp_path / "two")
    assert "several" in _one_line_naming(exc, tmp_path / "two")


def test_split_defaults_and_transforms():
    assert VOC.splits == ("train", "val", "trainval", "trainaug")
    assert (VOC.train_split, VOC.eval_split) == ("train", "val")
    assert VOC.transforms == Transforms(resize=512, crop=(512, 512), eval_resize=512)


def test_class_names_and_bitget_palette():
    assert VOC.class_names == ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
                               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
                               "sheep", "sofa", "train", "tvmonitor")
    known = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128), 7: (128, 128, 128),
             8: (64, 0, 0), 12: (64, 0, 128), 15: (192, 128, 128), 16: (0, 64, 0), 20: (0, 64, 128)}
    for index, colour in known.items():
        assert VOC.palette[index] == colour
    assert len(VOC.palette) == 21
    assert voc_colour(255) == (224, 224, 192)


def test_mapping_value_by_value(voc):
    base, _ = voc
    dataset = VOC(base)
    sample = dataset.samples("val")[0]
    raw = np.array([list(range(21)) + [255]], np.uint8)
    write_png(sample.label, raw)
    assert dataset.read_label(sample).tolist() == [list(range(21)) + [255]]
    for bad in (21, 254):
        write_png(sample.label, np.full((2, 2), bad, np.uint8))
        with pytest.raises(UserError) as exc:
            dataset.read_label(sample)
        assert str(bad) in _one_line_naming(exc, sample.label)


def test_palette_indices_are_read_not_colours(voc):
    base, _ = voc
    dataset = VOC(base)
    sample = dataset.samples("val")[0]
    img = Image.fromarray(np.array([[0, 1], [1, 255]], np.uint8)).convert("P")
    img.putpalette([9, 9, 9, 0, 255, 0] + [0] * (3 * 253) + [224, 224, 192])  # index 1 drawn green
    img.save(sample.label)
    assert dataset.read_label(sample).tolist() == [[0, 1], [1, 255]]


def test_colour_label_is_refused(voc):
    base, _ = voc
    dataset = VOC(base)
    sample = dataset.samples("train")[0]
    Image.fromarray(np.full((5, 7, 3), 128, np.uint8)).save(sample.label)
    with pytest.raises(UserError) as exc:
        dataset.read_label(sample)
    _one_line_naming(exc, sample.label)


@pytest.mark.parametrize("aug_list", AUG_LISTS)
def test_trainaug_counts_and_label_sources(tmp_path, aug_list):
    expected = build_voc(tmp_path, aug=aug_list)
    dataset = VOC(tmp_path)
    samples = dataset.samples("trainaug")
    assert [s.stem for s in samples] == expected["trainaug"]["stems"]
    sources = {s.stem: s.label.parent.name for s in samples}
    assert sources["2007_000032"] == "SegmentationClassAug"  # SBD's label wins over VOC's
    if "2007_000039" in sources:  # no SBD label: VOC's own
        assert sources["2007_000039"] == "SegmentationClass"
    report = inspect_split(dataset, "trainaug")
    assert report["class_pixels"] == expected["trainaug"]["class_pixels"]
    assert report["ignore_pixels"] == expected["trainaug"]["ignore_pixels"]
    train, evaluation = dataset.transfer_pools("trainaug", "val")
    assert len(train) == len(expected["trainaug"]["stems"]) and len(evaluation) == 1


def test_trainaug_without_sbd_explains_how_to_get_it(voc):
    base, _ = voc
    with pytest.raises(UserError) as exc:
        VOC(base).samples("trainaug")
    message = _one_line_naming(exc, base / "SegmentationClassAug")
    assert "SBD" in message and "voc_aug" in message


def test_listed_stem_without_jpg_or_png_names_the_missing_file(voc):
    base, _ = voc
    (base / "SegmentationClass" / "2007_000039.png").unlink()
    with pytest.raises(UserError) as exc:
        VOC(base).samples("train")
    _one_line_naming(exc, base / "SegmentationClass" / "2007_000039.png")
    (base / "JPEGImages" / "2007_000033.jpg").unlink()
    with pytest.raises(UserError) as exc:
        VOC(base).samples("val")
    _one_line_naming(exc, base / "JPEGImages" / "2007_000033.jpg")


def test_missing_list_and_missing_label_folder_are_named(voc):
    base, _ = voc
    (base / "ImageSets" / "Segmentation" / "trainval.txt").unlink()
    with pytest.raises(UserError) as exc:
        VOC(base).samples("trainval")
    _one_line_naming(exc, base / "ImageSets" / "Segmentation" / "trainval.txt")
    for p in (base / "SegmentationClass").iterdir():
        p.unlink()
    (base / "SegmentationClass").rmdir()
    with pytest.raises(UserError) as exc:
        VOC(base).samples("val")
    _one_line_naming(exc, base / "SegmentationClass")


def test_corrupt_files_are_named(voc):
    base, _ = voc
    dataset = VOC(base)
    sample = dataset.samples("train")[1]
    sample.label.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UserError) as exc:
        dataset.read_label(sample)
    _one_line_naming(exc, sample.label)
    sample.image.write_bytes(b"garbage")
    with pytest.raises(UserError) as exc:
        dataset.read_image(sample)
    _one_line_naming(exc, sample.image)


def test_bad_split(voc):
    base, _ = voc
    with pytest.raises(UserError, match="trainaug"):
        VOC(base).samples("test")


def test_image_size_mismatch_is_caught_by_inspection(voc):
    base, _ = voc
    write_jpg(base / "JPEGImages" / "2007_000033.jpg", 6, 4)
    with pytest.raises(UserError) as exc:
        inspect_split(VOC(base), "val")
    _one_line_naming(exc, base / "SegmentationClass" / "2007_000033.png")
