"""ade20k: layout, root resolution, reduce_zero_label mapping, class table, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bench.core.errors import UserError
from fixtures.ade20k import build_ade20k
from transfer.datasets import open_dataset
from transfer.datasets.ade20k import ADE20K
from transfer.datasets.base import Transforms
from transfer.datasets.inspection import inspect_split


@pytest.fixture
def ade(tmp_path):
    expected = build_ade20k(tmp_path)
    return tmp_path / "ADEChallengeData2016", expected


def _one_line_naming(exc: pytest.ExceptionInfo, path) -> str:
    message = str(exc.value)
    assert "\n" not in message
    assert str(path) in message, message
    return message


@pytest.mark.parametrize("split", ["training", "validation"])
def test_inspect_counts_match_hand_built_labels(ade, split):
    base, expected = ade
    report = inspect_split(open_dataset("ade20k", base), split)
    assert report["num_images"] == len(expected[split]["stems"])
    assert report["num_classes"] == 150
    assert report["class_pixels"] == expected[split]["class_pixels"]
    assert report["ignore_pixels"] == expected[split]["ignore_pixels"]


def test_stems_sorted_and_decoys_ignored(ade):
    base, expected = ade
    dataset = open_dataset("ade20k", base)
    for split in ("training", "validation"):
        samples = dataset.samples(split)
        assert [s.stem for s in samples] == expected[split]["stems"]
        assert all(s.image.suffix == ".jpg" and s.label.parent == base / "annotations" / split for s in samples)


@pytest.mark.parametrize("parent", [False, True])
def test_root_is_the_folder_or_its_parent(ade, parent):
    base, expected = ade
    dataset = ADE20K(base.parent if parent else base)
    assert dataset.base == base
    assert [s.stem for s in dataset.samples("validation")] == expected["validation"]["stems"]


def test_split_defaults_and_transforms():
    assert ADE20K.splits == ("training", "validation")
    assert (ADE20K.train_split, ADE20K.eval_split) == ("training", "validation")
    assert ADE20K.transforms == Transforms(resize=512, crop=(512, 512), eval_resize=512)


def test_class_table_is_mmsegmentations():
    names, palette = ADE20K.class_names, ADE20K.palette
    assert len(names) == len(set(names)) == 150 and len(palette) == 150
    spot = {0: ("wall", (120, 120, 120)), 1: ("building", (180, 120, 120)), 6: ("road", (140, 140, 140)),
            7: ("bed", (204, 5, 255)), 12: ("person", (150, 5, 61)), 20: ("car", (0, 102, 200)),
            44: ("chest of drawers", (6, 51, 255)), 48: ("skyscraper", (140, 140, 140)),
            89: ("television receiver", (0, 255, 194)), 136: ("traffic light", (41, 0, 255)),
            141: ("crt screen", (122, 0, 255)), 149: ("flag", (92, 0, 255))}
    for train_id, (name, colour) in spot.items():
        assert (names[train_id], palette[train_id]) == (name, colour)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in palette)


def test_reduce_zero_label_mapping_value_by_value(ade):
    base, _ = ade
    label = base / "annotations" / "validation" / "ADE_val_00000002.png"
    Image.fromarray(np.arange(151, dtype=np.uint8)[None, :]).save(label)
    dataset = ADE20K(base)
    sample = next(s for s in dataset.samples("validation") if s.label == label)
    mapped = dataset.read_label(sample)
    assert mapped.dtype == np.uint8 and mapped.shape == (1, 151)
    assert mapped[0, 0] == 255
    for raw in range(1, 151):
        assert mapped[0, raw] == raw - 1


def test_value_above_150_is_an_error_naming_the_file(ade):
    base, _ = ade
    label = base / "annotations" / "training" / "ADE_train_00000002.png"
    Image.fromarray(np.full((5, 7), 151, np.uint8)).save(label)
    with pytest.raises(UserError) as exc:
        inspect_split(ADE20K(base), "training")
    assert "151" in _one_line_naming(exc, label)


def test_image_without_label_names_the_image(ade):
    base, _ = ade
    (base / "annotations" / "training" / "ADE_train_00000010.png").unlink()
    with pytest.raises(UserError) as exc:
        ADE20K(base).samples("training")
    _one_line_naming(exc, base / "images" / "training" / "ADE_train_00000010.jpg")


def test_missing_split_folder_is_named(ade):
    base, _ = ade
    folder = base / "annotations" / "validation"
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()
    with pytest.raises(UserError) as exc:
        ADE20K(base).samples("validation")
    _one_line_naming(exc, folder)


def test_corrupt_label_and_image_are_named(ade):
    base, _ = ade
    dataset = ADE20K(base)
    sample = dataset.samples("training")[0]
    sample.label.write_bytes(b"\x89PNG garbage, not a png")
    with pytest.raises(UserError) as exc:
        dataset.read_label(sample)
    _one_line_naming(exc, sample.label)
    sample.image.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(UserError) as exc:
        dataset.read_image(sample)
    _one_line_naming(exc, sample.image)


def test_colour_annotation_is_refused(ade):
    base, _ = ade
    dataset = ADE20K(base)
    sample = dataset.samples("validation")[1]
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(sample.label)
    with pytest.raises(UserError) as exc:
        dataset.read_label(sample)
    _one_line_naming(exc, sample.label)


def test_wrong_root_names_the_folder_and_the_expected_one(tmp_path):
    (tmp_path / "images").mkdir()  # half a layout is still not one
    with pytest.raises(UserError) as exc:
        ADE20K(tmp_path)
    message = _one_line_naming(exc, tmp_path)
    assert "ADEChallengeData2016" in message and "annotations" in message


def test_bad_split(ade):
    base, _ = ade
    with pytest.raises(UserError, match="validation"):
        ADE20K(base).samples("val")


def test_split_without_images_is_an_error(ade):
    base, _ = ade
    for p in (base / "images" / "validation").glob("*.jpg"):
        p.unlink()
    with pytest.raises(UserError) as exc:
        ADE20K(base).samples("validation")
    _one_line_naming(exc, base / "images" / "validation")
