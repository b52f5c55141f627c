"""Batching for pre-training: resizing and cropping keep images, depth and intrinsics consistent."""

import numpy as np
import pytest
import torch

from bench.core.errors import UserError
from pretrain.batches import Batches
from pretrain.sources import open_source
from pretrain.sources.base import PretrainSource


class _OneFrame(PretrainSource):
    """A 40×80 frame, dark left of column 40 and bright from it, with one depth measurement."""
    name = "one"
    kinds = ("depth", "video")

    def items(self, kind):
        return ["a"]

    def load(self, kind, item_id):
        image = np.zeros((40, 80, 3), np.uint8)
        image[:, 40:] = 200
        depth = np.zeros((40, 80), np.float32)
        depth[20, 60] = 7.0  # one LiDAR return
        K = np.array([[50.0, 0, 40], [0, 40.0, 20], [0, 0, 1]])
        if kind == "depth":
            return {"image": image, "depth": depth}
        return {"frames": [image, image, image], "K": K}


def test_resize_scales_intrinsics_and_keeps_depth_sparse(tmp_path):
    b = Batches(_OneFrame(tmp_path, {}), "video", "m", resize=(80, 240))
    out = b.draw(torch.Generator().manual_seed(0), 2)
    assert out["frames"].shape == (2, 3, 3, 80, 240) and out["frames"].dtype == torch.uint8
    torch.testing.assert_close(out["K"][0], torch.tensor([[150.0, 0, 120], [0, 80.0, 40], [0, 0, 1]]))
    d = Batches(_OneFrame(tmp_path, {}), "depth", "m", resize=(36, 40)).draw(torch.Generator(), 1)["depth"][0]
    # Nearest neighbour: the one measurement survives or vanishes, it is never smeared or averaged.
    assert set(torch.unique(d).tolist()) <= {0.0, 7.0} and int((d > 0).sum()) <= 1


def test_crop_shifts_the_principal_point_by_the_offset(tmp_path):
    b = Batches(_OneFrame(tmp_path, {}), "video", "m", crop=(34, 48))
    gen = torch.Generator().manual_seed(3)
    out = b.draw(gen, 6)
    assert out["frames"].shape[-2:] == (34, 48)
    # The image is dark left of column 20 and bright from it, so each crop's columns tell its x
    # offset, which must be exactly the principal point's shift.
    for frames, K in zip(out["frames"], out["K"]):
        x0 = int(round(40 - K[0, 2].item()))
        bright = frames[1, 0, 0] > 100
        assert 0 <= x0 <= 80 - 48 and torch.equal(bright, torch.arange(48) + x0 >= 40)
        assert 0 <= 20 - K[1, 2].item() <= 40 - 34 and K[0, 0].item() == 50.0


def test_crop_larger_than_the_training_size_and_missing_kinds_are_one_line(tmp_path, tiny_world):
    with pytest.raises(UserError, match="--crop 50x40 is larger than the training size 40x80"):
        Batches(_OneFrame(tmp_path, {}), "video", "m", crop=(50, 40))
    with pytest.raises(UserError, match="--method classification trains on label data, which dataset 'one' does not"):
        Batches(_OneFrame(tmp_path, {}), "label", "classification")


def test_synth_source_only_uses_training_sequences(tiny_world):
    src = open_source("synth", tiny_world)
    frames = src.items("depth")
    assert {i.split("/")[0] for i in frames} == {"seq_000", "seq_001"}  # seq_002 is held out
    video = src.items("video")
    assert len(video) == 2 * (4 - 2)  # each needs a previous and a next frame
    item = src.load("video", video[0])
    assert [f.shape for f in item["frames"]] == [(48, 144, 3)] * 3
    stereo = src.load("stereo", frames[0])
    assert stereo["baseline"] > 0 and not np.array_equal(stereo["left"], stereo["right"])


def test_same_generator_same_batch(tiny_world):
    b = Batches(open_source("synth", tiny_world), "depth", "m", crop=(40, 64))
    x = b.draw(torch.Generator().manual_seed(5), 3)
    y = b.draw(torch.Generator().manual_seed(5), 3)
    assert x["ids"] == y["ids"] and torch.equal(x["image"], y["image"]) and torch.equal(x["depth"], y["depth"])


def test_too_small_a_training_size_is_one_line(tiny_world):
    from pretrain.api import build_method

    config = {"method": "depth_supervised", "arch": "resnet10t", "root": str(tiny_world), "seed": 0,
              "resize": [32, 64]}
    with pytest.raises(UserError, match="training size 32x64 is too small for a stride-32 encoder"):
        build_method(config)
