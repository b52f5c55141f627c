"""Few-shot splits and the shared train/eval geometry (resize, crop, padding, native-size eval)."""

import numpy as np
import pytest
import torch

from bench.core.seeding import step_generator
from bench.core.errors import UserError
from transfer.data import EvalImages, TrainImages, dataset_settings, random_crop, target_size
from bench.core.sizes import parse_size
from transfer.datasets.base import Sample, SegmentationDataset
from transfer.splits import few_shot_stems
from transfer.train import evaluate

POOL = [f"{i:06d}_10" for i in range(150)]


def test_few_shot_subsets_are_seeded_nested_and_not_the_first_images():
    a16 = few_shot_stems(POOL, 16, seed=0, dataset="kitti")
    assert a16 == few_shot_stems(list(reversed(POOL)), 16, seed=0, dataset="kitti")  # listing order is irrelevant
    assert len(set(a16)) == 16 and a16 != POOL[:16] and a16 == sorted(a16)
    a32, a64 = (few_shot_stems(POOL, n, seed=0, dataset="kitti") for n in (32, 64))
    assert set(a16) < set(a32) < set(a64)
    assert few_shot_stems(POOL, 16, seed=1, dataset="kitti") != a16
    assert few_shot_stems(POOL, 150, seed=0, dataset="kitti") == sorted(POOL)


def test_few_shot_bad_sizes_are_user_errors():
    with pytest.raises(UserError, match="exceeds the 150 labelled training images of kitti"):
        few_shot_stems(POOL, 151, seed=0, dataset="kitti")
    with pytest.raises(UserError, match="at least 1"):
        few_shot_stems(POOL, 0, seed=0, dataset="kitti")
    with pytest.raises(UserError, match="repeats stems"):
        few_shot_stems(POOL + POOL[:1], 4, seed=0, dataset="kitti")


@pytest.mark.parametrize("text, expected", [
    ("192x640", (192, 640)), ([192, 640], (192, 640)), ("512", 512), (512, 512), ("native", None), (None, None),
])
def test_parse_size(text, expected):
    assert parse_size(text, "resize") == expected


@pytest.mark.parametrize("text, message", [
    ("192by640", "expected HxW"), ("4x640", "too small"), ("ax640", "integers"),
])
def test_parse_size_errors(text, message):
    with pytest.raises(UserError, match=message):
        parse_size(text, "resize")
    with pytest.raises(UserError, match="give HxW"):
        parse_size("512", "crop", allow_short_side=False)


def test_short_side_resize_keeps_the_aspect_ratio():
    # KITTI 375x1242 to a 512 short side: 1242 * 512 / 375 = 1695.74 -> 1696.
    assert target_size(375, 1242, 512) == (512, 1696)
    assert target_size(500, 375, 512) == (683, 512)  # 500 * 512 / 375 = 682.67
    assert target_size(375, 1242, (192, 640)) == (192, 640)
    assert target_size(375, 1242, None) == (375, 1242)


def test_crop_larger_than_the_image_pads_with_ignore():
    image = np.full((4, 5, 3), 200, np.uint8)
    label = np.ones((4, 5), np.uint8)
    img, lbl = random_crop(torch.Generator().manual_seed(0), image, label, (6, 7))
    assert img.shape == (6, 7, 3) and lbl.shape == (6, 7)
    assert (lbl == 1).sum() == 20 and (lbl == 255).sum() == 42 - 20
    assert (img[lbl == 255] == 0).all() and (img[lbl == 1] == 200).all()


class _Blocks(SegmentationDataset):
    """In-memory dataset: label = 2x2 blocks of classes, image colour = class."""

    name, splits, train_split, eval_split = "blocks", ("train", "val"), "train", "val"
    class_names, palette = ("a", "b", "c", "d"), ((0, 0, 0),) * 4

    def __init__(self, sizes):
        self.sizes = sizes

    def samples(self, split):
        return [Sample(f"{split}{i}", i, i) for i in range(len(self.sizes))]

    def read_label(self, sample):
        h, w = self.sizes[sample.label]
        label = np.zeros((h, w), np.uint8)
        label[:h // 2, w // 2:], label[h // 2:, :w // 2], label[h // 2:, w // 2:] = 1, 2, 3
        return label

    def read_image(self, sample):
        return np.repeat(self.read_label(sample)[..., None] * 60, 3, axis=2).astype(np.uint8)


def test_training_batches_crop_flip_and_refuse_mixed_sizes_without_a_crop():
    ds = _Blocks([(40, 48), (50, 36)])
    train = TrainImages(ds, ds.samples("train"), resize=None, crop=(36, 36))
    x, y = train.batch(step_generator(0, 0), 4)
    assert x.shape == (4, 3, 36, 36) and x.dtype == torch.uint8 and y.shape == (4, 36, 36) and y.dtype == torch.int64
    x2, y2 = train.batch(step_generator(0, 0), 4)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # the step's generator decides everything
    with pytest.raises(UserError, match="differ in size after resizing"):
        for step in range(20):  # some step draws both sizes
            TrainImages(ds, ds.samples("train"), resize=None, crop=None).batch(step_generator(0, step), 4)


def test_eval_batches_group_equal_sizes_and_keep_native_labels(monkeypatch):
    monkeypatch.setattr("bench.core.sizes.MIN_SIDE", 1)  # no encoder here: tiny sizes keep the test readable
    ds = _Blocks([(8, 8), (8, 8), (12, 8), (8, 8)])
    ev = EvalImages(ds, ds.samples("val"), resize=(4, 4))
    shapes = [(tuple(x.shape), tuple(y.shape)) for x, y in ev.batches(batch_size=8)]
    assert shapes == [((2, 3, 4, 4), (2, 8, 8)), ((1, 3, 4, 4), (1, 12, 8)), ((1, 3, 4, 4), (1, 8, 8))]


class _ColourHead(torch.nn.Module):
    def forward(self, features, size):
        cls = (features[0][:, 0].long() + 30) // 60
        return torch.nn.functional.one_hot(cls, 4).permute(0, 3, 1, 2).float()


class _Oracle(torch.nn.Module):
    """Reads the class from the image colour: perfect at any size. The identity 'encoder' hands
    the image to the head, as `SegmentationModel.encode` hands features to a decoder."""

    def __init__(self):
        super().__init__()
        self.decoder = _ColourHead()

    def features(self, images):
        return [images]


def test_evaluation_scores_upsampled_predictions_on_native_labels(monkeypatch):
    monkeypatch.setattr("bench.core.sizes.MIN_SIDE", 1)
    ds = _Blocks([(8, 8), (12, 16)])
    # Blocks survive a 4x4 resize and the bilinear upsampling back: a perfect score.
    m = evaluate(_Oracle(), EvalImages(ds, ds.samples("val"), resize=(4, 4)), 4, 255, batch_size=2)
    assert m["miou"] == pytest.approx(1.0)
    # At 1x1 the image is one averaged colour, so one class is predicted everywhere: a quarter
    # of the native pixels are right -- scored at 8x8, not at the 1x1 prediction size.
    m = evaluate(_Oracle(), EvalImages(ds, ds.samples("val")[:1], resize=(1, 1)), 4, 255, batch_size=1)
    assert m["pixel_acc"] == pytest.approx(0.25)


def test_dataset_settings_take_defaults_and_overrides():
    assert dataset_settings("kitti")["resize"] == [192, 640]
    s = dataset_settings("ade20k", resize="256", crop="256x256", eval_resize="native")
    assert (s["resize"], s["crop"], s["eval_resize"]) == (256, [256, 256], None)
    with pytest.raises(UserError, match="unknown dataset"):
        dataset_settings("imagenet")


def test_images_too_small_for_the_encoder_are_a_user_error():
    ds = _Blocks([(8, 12)])
    with pytest.raises(UserError, match="at least 33 pixels a side"):
        TrainImages(ds, ds.samples("train"), resize=None, crop=(8, 8)).batch(step_generator(0, 0), 1)
    with pytest.raises(UserError, match="evaluation images: 8x12 is too small"):
        next(EvalImages(ds, ds.samples("val"), resize=None).batches(1))


def test_the_stride_32_size_rule_has_one_wording_at_its_boundary():
    from bench.core.sizes import MIN_SIDE, too_small

    assert MIN_SIDE == 33  # a 2x2 map at stride 32 (the decoders' reflection padding)
    assert too_small((33, 500)) is None and too_small(33) is None
    assert too_small((500, 32)) == "500x32 is too small for a stride-32 encoder (at least 33 pixels a side)"
    assert too_small(32) == "a short side of 32 is too small for a stride-32 encoder (at least 33 pixels a side)"
