"""Batching for pre-training: resizing and cropping keep images, depth and intrinsics consistent."""

import numpy as np
import pytest
import torch

from bench.errors import UserError
from pretrain.batches import Batches
from pretrain.sources import open_source
from pretrain.sources.base import PretrainSource


class _OneFrame(PretrainSource):
    """A 20×40 frame with a sparse depth map and a known camera."""
    name = "one"
    kinds = ("depth", "video")

    def items(self, kind):
        return ["a"]

    def load(self, kind, item_id):
        image = np.zeros((20, 40, 3), np.uint8)
        image[:, 20:] = 200
        depth = np.zeros((20, 40), np.float32)
        depth[10, 30] = 7.0  # one LiDAR return
        K = np.array([[50.0, 0, 20], [0, 40.0, 10], [0, 0, 1]])
        if kind == "depth":
            return {"image": image, "depth": depth}
        return {"frames": [image, image, image], "K": K}


def test_resize_scales_intrinsics_and_keeps_depth_sparse(tmp_path):
    b = Batches(_OneFrame(tmp_path, {}), "video", "m", resize=(10, 80))
    out = b.draw(torch.Generator().manual_seed(0), 2)
    assert out["frames"].shape == (2, 3, 3, 10, 80) and out["frames"].dtype == torch.uint8
    torch.testing.assert_close(out["K"][0], torch.tensor([[100.0, 0, 40], [0, 20.0, 5], [0, 0, 1]]))
    d = Batches(_OneFrame(tmp_path, {}), "depth", "m", resize=(10, 20)).draw(torch.Generator(), 1)["depth"][0]
    # Nearest neighbour: the one measurement survives or vanishes, it is never smeared or averaged.
    assert set(torch.unique(d).tolist()) <= {0.0, 7.0} and int((d > 0).sum()) <= 1


def test_crop_shifts_the_principal_point_by_the_offset(tmp_path):
    b = Batches(_OneFrame(tmp_path, {}), "video", "m", crop=(8, 16))
    gen = torch.Generator().manual_seed(3)
    out = b.draw(gen, 4)
    assert out["frames"].shape[-2:] == (8, 16)
    # The image is dark left of column 20 and bright from it, so each crop's columns tell its x
    # offset, which must be exactly the principal point's shift.
    for frames, K in zip(out["frames"], out["K"]):
        x0 = int(round(20 - K[0, 2].item()))
        bright = frames[1, 0, 0] > 100
        assert torch.equal(bright, torch.arange(16) + x0 >= 20)
        assert 0 <= 10 - K[1, 2].item() <= 20 - 8 and K[0, 0].item() == 50.0


def test_crop_larger_than_the_training_size_and_missing_kinds_are_one_line(tmp_path, tiny_world):
    with pytest.raises(UserError, match="--crop 30x16 is larger than the training size 20x40"):
        Batches(_OneFrame(tmp_path, {}), "video", "m", crop=(30, 16))
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
    b = Batches(open_source("synth", tiny_world), "depth", "m", crop=(32, 64))
    x = b.draw(torch.Generator().manual_seed(5), 3)
    y = b.draw(torch.Generator().manual_seed(5), 3)
    assert x["ids"] == y["ids"] and torch.equal(x["image"], y["image"]) and torch.equal(x["depth"], y["depth"])
