"""Pseudo-labels (`bench pseudo-label`) and the NimbleD-style distillation method that reads them."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch

import pretrain.pseudo_label as pl
from bench.core.checkpoint import load_checkpoint, save_checkpoint
from bench.core.errors import UserError
from bench.core.models.backbones import create_encoder
from pretrain.api import build_method
from pretrain.pseudo_label import PseudoLabelled, run_pseudo_label
from pretrain.sources import open_source
from tests.learning import pretrain_before_and_after
from tests.margins import assert_below
from transfer.model import build_model

QUIET = {"progress": False, "log": lambda m: None}
VIDEO_ITEMS = ["seq_000/000001", "seq_000/000002", "seq_001/000001", "seq_001/000002"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def labels(tiny_depth_ckpt, tiny_world, tmp_path_factory):
    return run_pseudo_label(tiny_depth_ckpt, "synth", tiny_world, tmp_path_factory.mktemp("pl") / "labels",
                            batch_size=3, device="cpu", **QUIET)


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_one_label_per_video_item_equal_to_the_teachers_inverse_depth(labels, tiny_depth_ckpt, tiny_world):
    files = sorted(str(p.relative_to(labels).with_suffix("")) for p in labels.rglob("*.npy"))
    assert files == VIDEO_ITEMS
    info = json.loads((labels / "pseudo_labels.json").read_text())
    assert info["count"] == 4 and info["dataset"] == "synth" and info["teacher_kind"] == "harness"
    assert info["size"] == [48, 144] and info["size_from"] == "native"
    assert not (labels / pl.PARTIAL_NAME).exists()

    # The teacher's own prediction for seq_001/000002, through the depth method's predict().
    ckpt = load_checkpoint(tiny_depth_ckpt)
    task = build_method({**ckpt.meta["config"], "root": str(tiny_world), "init": None})
    task.encoder.load_state_dict(ckpt.encoder)
    task.decoder.load_state_dict(ckpt.decoder)
    task.encoder.eval(), task.decoder.eval()
    frame = np.array(open_source("synth", tiny_world).load("video", "seq_001/000002")["frames"][1])
    with torch.no_grad():
        depth = task.predict(torch.from_numpy(frame).permute(2, 0, 1)[None])[0].numpy()
    label = np.load(labels / "seq_001" / "000002.npy")
    assert label.dtype == np.float32 and label.shape == (48, 144) and np.isfinite(label).all()
    np.testing.assert_allclose(label, 1.0 / depth, rtol=1e-4)


def test_finished_output_is_reused_and_an_interrupted_run_resumes(labels, tiny_depth_ckpt, tiny_world, tmp_path,
                                                                  monkeypatch):
    messages = []
    assert run_pseudo_label(tiny_depth_ckpt, "synth", tiny_world, labels, progress=False, log=messages.append) == labels
    assert messages == [f"{labels / 'pseudo_labels.json'}: up to date, skipped"]

    out = tmp_path / "labels"
    saved, original = [], pl._save_npy

    def crash_after_two(path, arr):
        if len(saved) == 2:
            raise KeyboardInterrupt
        saved.append(path)
        original(path, arr)

    monkeypatch.setattr(pl, "_save_npy", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_pseudo_label(tiny_depth_ckpt, "synth", tiny_world, out, batch_size=1, **QUIET)
    assert not (out / "pseudo_labels.json").exists() and len(saved) == 2
    stamps = {p: p.stat().st_mtime_ns for p in saved}

    monkeypatch.setattr(pl, "_save_npy", lambda path, arr: (saved.append(path), original(path, arr)))
    messages.clear()
    run_pseudo_label(tiny_depth_ckpt, "synth", tiny_world, out, batch_size=1, progress=False, log=messages.append)
    assert messages[0] == "resuming: 2 of 4 pseudo-labels already written"
    assert len(saved) == 4 and set(saved[2:]).isdisjoint(stamps)  # only the missing two were computed
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    for item in VIDEO_ITEMS:
        # Batch size 1 against 3: the same values up to float rounding of the kernels.
        np.testing.assert_allclose(np.load(pl.label_path(out, item)), np.load(pl.label_path(labels, item)), rtol=1e-5)
    assert json.loads((out / "pseudo_labels.json").read_text())["count"] == 4


def test_teacher_without_a_depth_decoder_is_a_one_line_error(tiny_world, tmp_path):
    path = save_checkpoint(tmp_path / "cls.safetensors", create_encoder("resnet10t").state_dict(),
                           {"arch": "resnet10t", "method": "classification", "data": {}, "steps": 1,
                            "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3}, "seed": 0, "decoder": None})
    with pytest.raises(UserError) as exc:
        run_pseudo_label(path, "synth", tiny_world, tmp_path / "out", **QUIET)
    assert "classification checkpoint without a monodepth2 depth decoder" in _one_line(exc)
    with pytest.raises(UserError, match="not found"):
        run_pseudo_label(tmp_path / "nothing.safetensors", "synth", tiny_world, tmp_path / "out", **QUIET)


def _tiny_depth_anything(folder):
    """A randomly initialised Depth Anything small enough for a test (nothing is downloaded)."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=56, out_indices=[1, 2], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, reassemble_factors=[2, 1],
                                 neck_hidden_sizes=[8, 16], fusion_hidden_size=16, head_hidden_size=8)
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    return folder


def test_depth_anything_folder_as_teacher(tiny_world, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    teacher = _tiny_depth_anything(tmp_path / "depth-anything")
    out = run_pseudo_label(teacher, "synth", tiny_world, tmp_path / "labels", resize=(40, 120), short_side=28,
                           device="cpu", **QUIET)
    files = sorted(out.rglob("*.npy"))
    assert len(files) == 4
    for f in files:
        arr = np.load(f)
        assert arr.dtype == np.float32 and arr.shape == (40, 120) and np.isfinite(arr).all()
    info = json.loads((out / "pseudo_labels.json").read_text())
    assert info["teacher_kind"] == "depth_anything" and info["size_from"] == "resize"
    assert info["teacher_options"]["short_side"] == 28
    # The teacher saw 28x84; by default the short side is 518, sides are multiples of the 14-pixel patch.
    assert pl.depth_anything_size((40, 120), 28) == (28, 84)
    assert pl.depth_anything_size((48, 144), 518) == (518, 1554)
    assert pl.depth_anything_size((375, 1242), 518) == (518, 1722)  # KITTI

    (teacher / "config.json").write_text(json.dumps({"model_type": "dpt"}))
    with pytest.raises(UserError, match="model_type 'dpt'"):
        run_pseudo_label(teacher, "synth", tiny_world, tmp_path / "other", **QUIET)


def _distill_config(world, labels, **options):
    return {"name": "d", "method": "depth_distill", "arch": "resnet10t", "dataset": "synth", "root": str(world),
            "data_id": "tiny", "steps": 4, "batch_size": 2, "lr": 1e-3, "seed": 0,
            "options": {"pseudo_labels": str(labels), "pose_arch": "resnet10t", **options}}


def test_depth_distill_trains_and_writes_a_reusable_checkpoint(labels, tiny_world, tmp_path, monkeypatch):
    # One fixed batch before and after (tests/learning.py), not the first step's batch against the
    # last step's other batch: 4 steps take its loss to about 0.67 x, a no-op optimiser leaves it equal.
    path, before, after = pretrain_before_and_after(_distill_config(tiny_world, labels), tmp_path / "run", monkeypatch,
                                                    **QUIET)
    assert_below(after, 0.9 * before, "distill: fixed-batch loss after 4 steps vs 0.9 x before")
    with open(tmp_path / "run" / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    for r in rows:  # the total is exactly the weighted sum of the two named terms
        expected = 0.9 * float(r["self_supervised"]) + 0.1 * float(r["pseudo_ssi"])
        assert float(r["loss"]) == pytest.approx(expected, rel=1e-5)
    ckpt = load_checkpoint(path)
    assert ckpt.meta["decoder"]["kind"] == "monodepth2" and ckpt.decoder
    assert ckpt.meta["pseudo_labels"]["teacher_kind"] == "harness"
    _, info = build_model("resnet10t", ckpt, "monodepth2", "auto", num_classes=7)
    assert info["effective"] == "encoder+decoder"
    # A video-trained (sigmoid disparity) checkpoint is itself a valid teacher.
    out = run_pseudo_label(path, "synth", tiny_world, tmp_path / "labels2", **QUIET)
    assert json.loads((out / "pseudo_labels.json").read_text())["teacher_options"]["output"] == "disparity"


def test_missing_pseudo_labels_are_one_line_errors(labels, tiny_world, tmp_path):
    config = _distill_config(tiny_world, labels)
    del config["options"]["pseudo_labels"]
    with pytest.raises(UserError) as exc:
        build_method(config)
    assert "needs -o pseudo_labels=DIR" in _one_line(exc)

    with pytest.raises(UserError) as exc:
        build_method(_distill_config(tiny_world, tmp_path / "nowhere"))
    assert "not found; run `bench pseudo-label" in _one_line(exc)

    partial = tmp_path / "partial"
    shutil.copytree(labels, partial)
    (partial / "seq_001" / "000001.npy").unlink()
    source = PseudoLabelled(open_source("synth", tiny_world), partial)
    assert source.load("video", "seq_000/000001")["pseudo"].shape == (48, 144)
    with pytest.raises(UserError) as exc:
        source.load("video", "seq_001/000001")
    message = _one_line(exc)
    assert str(partial / "seq_001" / "000001.npy") in message and "bench pseudo-label" in message

    (partial / "pseudo_labels.json").unlink()
    with pytest.raises(UserError, match="missing"):
        PseudoLabelled(open_source("synth", tiny_world), partial)
    info = json.loads((labels / "pseudo_labels.json").read_text())
    (partial / "pseudo_labels.json").write_text(json.dumps({**info, "dataset": "kitti_raw"}))
    with pytest.raises(UserError) as exc:
        PseudoLabelled(open_source("synth", tiny_world), partial)
    assert "dataset 'kitti_raw', not 'synth'" in _one_line(exc)


def test_labels_from_another_teacher_in_the_same_folder_make_another_training(labels, tiny_world, tmp_path):
    from pretrain.api import pretrain_fingerprint, resolve_config

    folder = tmp_path / "copy"
    shutil.copytree(labels, folder)
    before = pretrain_fingerprint(resolve_config(_distill_config(tiny_world, folder)))
    info = json.loads((folder / "pseudo_labels.json").read_text())
    (folder / "pseudo_labels.json").write_text(json.dumps({**info, "teacher_sha256": "0" * 64}))
    assert pretrain_fingerprint(resolve_config(_distill_config(tiny_world, folder))) != before
