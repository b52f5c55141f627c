"""Self-supervised depth pre-training from video (known and learned intrinsics) and from stereo:
a few steps on the generated world lower the loss and leave a checkpoint transfer can reuse."""

import csv

import pytest
import torch

from bench.core.checkpoint import load_checkpoint
from bench.core.errors import UserError
from pretrain.api import build_method
from pretrain.sources.synth import SynthSource
from tests.learning import pretrain_before_and_after
from tests.margins import assert_below
from transfer.model import build_model


# Small convolutions run fastest on one thread, and far faster than two when other
# processes share the cores; restored afterwards.
pytestmark = pytest.mark.usefixtures("one_thread")


def _config(world, method, steps, batch_size=2, **options):
    return {"name": method, "method": method, "arch": "resnet10t", "root": str(world), "data_id": "tiny",
            "steps": steps, "batch_size": batch_size, "lr": 1e-3, "seed": 0, "state_every": 100, "options": options}


def _uncalibrated(monkeypatch):
    """The generated world as if its video had no calibration (K None, as a folder of frames)."""
    load = SynthSource.load

    def without_K(self, kind, item_id):
        item = load(self, kind, item_id)
        return {**item, "K": None} if kind == "video" else item

    monkeypatch.setattr(SynthSource, "load", without_K)


def _losses(out_dir) -> list[float]:
    with open(out_dir / "history.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


# (method, steps, batch size, options, bound): after training, the loss of one fixed batch must be
# below `bound` x its loss before (tests/learning.py), measured at 0.75-0.85 x for video and
# 0.68-0.71 x for stereo over seeds and thread counts. Video's automasked photometric loss is capped
# by the unwarped frames' error, which is about where it starts, and flattens after a few steps
# (20 learn no more than 10), so its bound is "any fall": a no-op optimiser leaves the batch's loss
# exactly equal and a loss of the wrong sign raises it (measured 1.06 x); 4 images a step hold its
# trajectory steadier than 2. Stereo learns more: a fall of 10 %.
CASES = {
    "video-known": ("depth_video", 10, 4, {"intrinsics": "known"}, 1.0),
    "video-learned-uncalibrated": ("depth_video", 10, 4, {"intrinsics": "learned"}, 1.0),
    # The default depth floor (one baseline) starts the disparities about ten times too large,
    # which takes many steps to unlearn; a floor suited to the tiny world shows learning in a few.
    "stereo": ("depth_stereo", 12, 2, {"min_depth": 2.0}, 0.9),
}


@pytest.mark.parametrize("case", list(CASES))
def test_training_lowers_the_loss_and_transfer_reuses_the_decoder(case, tiny_world, tmp_path, monkeypatch):
    method, steps, batch_size, options, bound = CASES[case]
    if case.endswith("uncalibrated"):
        _uncalibrated(monkeypatch)
    if method == "depth_video":
        options = {**options, "pose_arch": "resnet10t"}  # the quick pose net
    path, before, after = pretrain_before_and_after(_config(tiny_world, method, steps, batch_size, **options),
                                                    tmp_path, monkeypatch, progress=False, log=lambda m: None)
    assert_below(after, bound * before, f"{case}: fixed-batch loss after {steps} steps vs {bound} x before")

    losses = _losses(tmp_path)
    assert len(losses) == steps and all(0 < v < 1 for v in losses)
    with open(tmp_path / "history.csv", newline="") as f:
        columns = next(csv.reader(f))
    assert {"photometric", "smoothness"} <= set(columns)
    assert ("automask_fraction" in columns) == (method == "depth_video")  # stereo: off by default

    ckpt = load_checkpoint(path)
    decoder = ckpt.meta["decoder"]
    assert decoder["kind"] == "monodepth2" and decoder["output"] == "disparity" and decoder["scales"] == [0, 1, 2, 3]
    assert not any(k.startswith(("pose", "camera")) for k in ckpt.decoder)  # pose net and camera head stay out
    model, info = build_model("resnet10t", ckpt, "monodepth2", "encoder+decoder", num_classes=7)
    assert info["effective"] == "encoder+decoder"
    assert model(torch.zeros(1, 3, 48, 144, dtype=torch.uint8)).shape == (1, 7, 48, 144)

    if method == "depth_stereo":
        assert ckpt.meta["metric_depth"] is True and ckpt.meta["stereo_baseline"] == pytest.approx(0.54)
    elif options["intrinsics"] == "learned":
        learned = ckpt.meta["learned_intrinsics"]
        assert learned["training_steps_averaged"] == steps
        # Above 0 and the centre inside the image by construction (softplus, sigmoid); the focal
        # lengths start at 0.69 (softplus(0)) and must not run off in 10 steps.
        assert all(0 < learned[k] for k in ("fx", "fy")) and all(0 < learned[k] < 1 for k in ("cx", "cy"))
        for k in ("fx", "fy"):
            assert_below(learned[k], 5, f"learned {k} (normalised)")
    else:
        assert ckpt.meta["intrinsics"] == "known" and "learned_intrinsics" not in ckpt.meta


def test_known_intrinsics_without_calibration_is_a_one_line_error(tiny_world, monkeypatch):
    _uncalibrated(monkeypatch)
    with pytest.raises(UserError, match="pass -o intrinsics=learned") as exc:
        build_method(_config(tiny_world, "depth_video", 2, pose_arch="resnet10t"))
    assert "\n" not in str(exc.value)


def test_self_supervised_gives_the_centre_disparity_with_its_graph(tiny_world):
    task = build_method(_config(tiny_world, "depth_video", 1, pose_arch="resnet10t", scales=2, min_reprojection=False))
    batch = task.batches.draw(torch.Generator().manual_seed(0), 2)
    loss, terms, disp = task.self_supervised(batch)
    assert disp.shape == (2, 1, 48, 144) and disp.requires_grad and 0 < float(disp.detach().min()) < float(disp.detach().max()) < 1
    assert set(terms) == {"photometric", "smoothness", "automask_fraction"}
    torch.testing.assert_close(loss.detach(), terms["photometric"] + terms["smoothness"])
    # Without a generator the tie-breaking noise is fixed: the same batch gives the same loss.
    torch.testing.assert_close(task.self_supervised(batch)[0], loss)


@pytest.mark.parametrize("method, options", [
    ("depth_video", {"intrinsics": "learned", "pose_arch": "resnet10t"}), ("depth_stereo", {})])
def test_every_network_and_scale_gets_a_gradient(tiny_world, method, options):
    task = build_method(_config(tiny_world, method, 1, **options))
    loss, _ = task.loss(torch.Generator().manual_seed(0), 2)
    loss.backward()
    heads = [task.decoder.head_conv(s).weight.grad for s in range(4)]
    assert all(g is not None and float(g.abs().sum()) > 0 for g in heads)
    for name, module in task.modules.items():
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name
    if method == "depth_stereo":
        assert set(task.modules) == {"encoder", "decoder"}
        assert task.min_depth == pytest.approx(0.54)  # default floor: one baseline
    else:
        assert set(task.modules) == {"encoder", "decoder", "pose", "camera"}


def test_bad_options_are_one_line_errors(tiny_world):
    with pytest.raises(UserError, match="option intrinsics"):
        build_method(_config(tiny_world, "depth_video", 1, intrinsics="guess"))
    with pytest.raises(UserError, match="pose_arch='nope' is not a registered backbone"):
        build_method(_config(tiny_world, "depth_video", 1, pose_arch="nope"))
    with pytest.raises(UserError, match="the pose network needs a CNN backbone"):
        build_method(_config(tiny_world, "depth_video", 1, pose_arch="vit_tiny_patch16_224"))
    with pytest.raises(UserError, match="min_depth=90.0 must be below max_depth=80.0"):
        build_method(_config(tiny_world, "depth_stereo", 1, min_depth=90.0))
