"""The self-supervised depth recipes against their references: NimbleD's pseudo-label loss at every
output scale (and the least-squares form as an option), no smoothness in depth_distill,
monodepth2's colour jitter (networks see it, the photometric loss does not; drawn from the step's
generator), its KITTI depth range (0.1-100 m) and its pose encoder started from the encoder's
--init weights. Each also through the CLI and a manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pretrain.methods.depth_video as dv
from bench.cli import main
from bench.core.checkpoint import load_checkpoint
from bench.core.errors import UserError
from bench.core.models.backbones import create_encoder
from fixtures.pretrain_layouts import build_kitti_raw
from pretrain.api import build_method, pretrain_fingerprint, resolve_config, run_pretrain
from pretrain.color_jitter import apply_jitter, jitter_params
from pretrain.losses import scale_and_shift_invariant_loss
from pretrain.methods.depth_distill import normalize_pseudo, pseudo_label_loss
from pretrain.pseudo_label import INFO_NAME, PseudoLabelled, label_path
from pretrain.sources import open_source
from test_ssi_loss import nimbled_transcription

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"progress": False, "log": lambda m: None}


def _config(world, method, steps=1, **options):
    return {"name": method, "method": method, "arch": "resnet10t", "root": str(world), "data_id": "tiny",
            "steps": steps, "batch_size": 2, "lr": 1e-3, "seed": 0, "state_every": 100,
            "options": {"pose_arch": "resnet10t", **options} if method in ("depth_video", "depth_distill") else options}


def fake_pseudo_labels(folder, dataset, root, source_options=None, *, holes=False):
    """A pseudo-label folder as `bench pseudo-label` leaves it, with made-up disparities: positive,
    a band of exact zeros (Depth Anything's sky) and, with `holes`, missing (NaN) labels."""
    source = open_source(dataset, root, source_options)
    rng = np.random.default_rng(0)
    for item in source.items("video"):
        h, w = source.load("video", item)["frames"][1].shape[:2]
        disp = rng.uniform(0.5, 4.0, (h, w)).astype(np.float32)
        disp[: max(1, h // 6)] = 0.0
        if holes:
            disp[rng.random((h, w)) < 0.2] = np.nan
        path = label_path(folder, item)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, disp)
    (folder / INFO_NAME).write_text(json.dumps({"dataset": dataset, "teacher": "made up", "teacher_kind": "harness",
                                                "teacher_sha256": "0" * 64}))
    return folder


@pytest.fixture(scope="module")
def synth_labels(tiny_world, tmp_path_factory):
    return fake_pseudo_labels(tmp_path_factory.mktemp("synth_pl"), "synth", tiny_world)


@pytest.fixture(scope="module")
def kitti(tmp_path_factory):
    return build_kitti_raw(tmp_path_factory.mktemp("kitti"), annotated=False, frames=6)


def _imagenet_style_file(tmp_path, arch="resnet10t"):
    """A torchvision/timm-style classifier state dict of `arch` (encoder keys plus an fc head)."""
    torch.manual_seed(321)
    enc = create_encoder(arch)
    for p in enc.parameters():  # away from the random init, so a copy is recognisable
        p.data.normal_()
    for name, b in enc.named_buffers():
        if "running" in name:
            b.uniform_(0.5, 1.5)
    state = {**enc.state_dict(), "fc.weight": torch.randn(10, enc.channels[-1]), "fc.bias": torch.zeros(10)}
    path = tmp_path / "imagenet.pth"
    torch.save(state, path)
    return path, enc.state_dict()


def _spy(monkeypatch, obj, name, calls):
    original = getattr(obj, name)

    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.setdefault(name, []).append((args, result))
        return result

    monkeypatch.setattr(obj, name, wrapped)


# --- 1. depth_distill: NimbleD's pseudo-label loss, at every scale --------------------------------

def _upsampled(disp, size):
    return disp if disp.shape[-2:] == size else F.interpolate(disp, size=size, mode="bilinear", align_corners=False)


def test_pseudo_label_loss_is_the_nimbled_transcription_averaged_over_upsampled_scales():
    gen = torch.Generator().manual_seed(0)
    pseudo = torch.rand(2, 16, 24, generator=gen, dtype=torch.float64) * 3
    pseudo[:, :3] = 0.0  # the sky: disparity 0 counts (NimbleD uses every pixel)
    disps = {s: torch.rand(2, 1, 16 // 2 ** s, 24 // 2 ** s, generator=gen, dtype=torch.float64).requires_grad_(True)
             for s in range(4)}
    ours, valid = pseudo_label_loss(disps, pseudo)
    assert bool(valid.all())
    expected = torch.stack([nimbled_transcription(_upsampled(d, (16, 24)), pseudo[:, None])
                            for d in disps.values()]).mean()
    torch.testing.assert_close(ours, expected)
    g_ours = torch.autograd.grad(ours, list(disps.values()))
    g_expected = torch.autograd.grad(expected, list(disps.values()))
    for a, b in zip(g_ours, g_expected):  # every scale gets its share of the gradient
        assert float(b.abs().sum()) > 0
        torch.testing.assert_close(a, b)
    # Scale 0 alone (the former loss took only it) is another value.
    assert abs(float(nimbled_transcription(disps[0], pseudo[:, None]).detach()) - float(ours.detach())) > 1e-4

    # midas_lsq: the least-squares form at every scale, against the normalised pseudo-labels.
    lsq, _ = pseudo_label_loss(disps, pseudo, "midas_lsq")
    target, mask = normalize_pseudo(pseudo, torch.ones_like(pseudo, dtype=torch.bool))
    expected_lsq = torch.stack([scale_and_shift_invariant_loss(_upsampled(d, (16, 24))[:, 0], target, mask)
                                for d in disps.values()]).mean()
    torch.testing.assert_close(lsq, expected_lsq)
    assert abs(float(lsq.detach()) - float(ours.detach())) > 1e-3


def test_missing_pseudo_labels_are_left_out_and_an_unlabelled_batch_is_none():
    gen = torch.Generator().manual_seed(1)
    pseudo = torch.rand(2, 8, 12, generator=gen, dtype=torch.float64)
    holes = torch.rand(2, 8, 12, generator=gen) < 0.3
    pseudo[holes] = float("nan")
    disps = {0: torch.rand(2, 1, 8, 12, generator=gen, dtype=torch.float64)}
    ours, valid = pseudo_label_loss(disps, pseudo)
    assert torch.equal(valid, ~holes)
    expected = torch.stack([nimbled_transcription(disps[0][i, 0][~holes[i]].view(1, 1, 1, -1),
                                                  pseudo[i][~holes[i]].view(1, 1, 1, -1)) for i in range(2)]).mean()
    torch.testing.assert_close(ours, expected)
    assert pseudo_label_loss(disps, torch.full_like(pseudo, float("nan")))[0] is None


@pytest.mark.parametrize("form", ["nimbled", "midas_lsq"])
def test_depth_distill_loss_uses_the_chosen_form_at_every_scale_without_smoothness(form, tiny_world, synth_labels,
                                                                                   monkeypatch):
    options = {"pseudo_labels": str(synth_labels)} | ({} if form == "nimbled" else {"ssi_loss": form})
    task = build_method(_config(tiny_world, "depth_distill", **options))
    assert task.options.ssi_loss == form and task.options.smoothness == 0.0 and task.options.color_jitter
    calls = {}
    _spy(monkeypatch, task, "self_supervised_scales", calls)
    loss, terms = task.loss(torch.Generator().manual_seed(0), 2)
    (batch, _), (_, _, disps) = calls["self_supervised_scales"][0]
    pseudo = batch["pseudo"]
    size = tuple(pseudo.shape[-2:])
    if form == "nimbled":
        expected = torch.stack([nimbled_transcription(_upsampled(d, size), pseudo[:, None]) for d in disps.values()])
    else:
        target, mask = normalize_pseudo(pseudo, torch.isfinite(pseudo))
        expected = torch.stack([scale_and_shift_invariant_loss(_upsampled(d, size)[:, 0], target, mask)
                                for d in disps.values()])
    assert len(expected) == 4
    torch.testing.assert_close(terms["pseudo_ssi"], expected.mean().detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.detach(), 0.9 * terms["self_supervised"] + 0.1 * terms["pseudo_ssi"])
    assert float(terms["smoothness"]) == 0.0 and float(terms["pseudo_valid_fraction"]) == 1.0  # zeros count


def test_smoothness_defaults_differ_and_stay_settable(tiny_world, synth_labels):
    assert dv.DepthVideo.Options().smoothness == 1e-3
    task = build_method(_config(tiny_world, "depth_distill", pseudo_labels=str(synth_labels), smoothness=1e-3,
                                color_jitter=False))
    _, terms = task.loss(torch.Generator().manual_seed(0), 2)
    assert float(terms["smoothness"]) > 0


# --- 2a. colour jitter -------------------------------------------------------------------------------

def test_jitter_follows_monodepth2_and_draws_only_from_the_generator():
    gen = torch.Generator().manual_seed(7)
    samples = torch.rand(40, 3, 3, 6, 8, generator=gen)
    samples[:, 2] = samples[:, 1]  # two equal frames stay equal: one jitter per sample
    out = dv.monodepth2_color_jitter(torch.Generator().manual_seed(1), samples)
    replay, applied = torch.Generator().manual_seed(1), 0
    for sample, result in zip(samples, out):
        u = float(torch.rand((), generator=replay))
        params = jitter_params(replay, 0.2, 0.2, 0.2, 0.1)
        factors = dict(params)
        assert all(0.8 <= factors[k] <= 1.2 for k in (0, 1, 2)) and -0.1 <= factors[3] <= 0.1
        assert sorted(factors) == [0, 1, 2, 3]
        expected = apply_jitter(sample, params).clamp(0, 1) if u < 0.5 else sample
        torch.testing.assert_close(result, expected, rtol=0, atol=0)
        applied += u < 0.5
        assert torch.equal(result[1], result[2])
    assert 10 < applied < 30  # probability 0.5
    # Nothing but the generator decides, so a resumed run replays the same augmentation.
    torch.manual_seed(0)
    again = dv.monodepth2_color_jitter(torch.Generator().manual_seed(1), samples)
    assert torch.equal(again, out)


@pytest.mark.parametrize("method", ["depth_video", "depth_stereo", "depth_distill"])
def test_networks_see_the_jittered_images_and_the_loss_the_original_ones(method, tiny_world, synth_labels,
                                                                         monkeypatch):
    monkeypatch.setattr(dv, "JITTER_P", 1.0)  # every sample jittered
    options = {"pseudo_labels": str(synth_labels)} if method == "depth_distill" else {}
    task = build_method(_config(tiny_world, method, **options))
    assert task.options.color_jitter  # on by default
    calls = {}
    for name in ("disparities", "view_synthesis_loss", "network_inputs"):
        _spy(monkeypatch, task, name, calls)
    if method != "depth_stereo":
        _spy(monkeypatch, task.pose_net, "forward", calls)
    task.loss(torch.Generator().manual_seed(0), 2)

    (raw_samples, _), _ = calls["network_inputs"][0]
    (seen,), _ = calls["disparities"][0]
    (target, _, _, sources, _), _ = calls["view_synthesis_loss"][0]
    raw = raw_samples.float() / 255
    assert seen.dtype == torch.float32 and not torch.allclose(seen, raw[:, 0 if method == "depth_stereo" else 1])
    if method == "depth_stereo":  # the left view is the depth net's input and the loss's target
        replay = torch.Generator().manual_seed(0)
        batch = task.batches.draw(replay, 2)
        torch.testing.assert_close(seen, task.network_inputs(batch["left"][:, None], replay)[:, 0])
        assert torch.equal(target, batch["left"].float() / 255)
        assert torch.equal(sources[0], batch["right"].float() / 255)
        return
    (a, b), _ = calls["forward"][0]
    n = seen.shape[0]
    assert torch.equal(a[n:], seen) and torch.equal(b[:n], seen)  # the pose net sees the same jittered frames
    assert not torch.allclose(a[:n], raw[:, 0]) and not torch.allclose(b[n:], raw[:, 2])
    assert torch.equal(target, raw[:, 1])  # the photometric loss: the original frames
    assert torch.equal(sources[0], raw[:, 0]) and torch.equal(sources[1], raw[:, 2])


def test_jitter_off_gives_the_original_images(tiny_world):
    task = build_method(_config(tiny_world, "depth_video", color_jitter=False))
    batch = task.batches.draw(torch.Generator().manual_seed(0), 2)
    assert torch.equal(task.network_inputs(batch["frames"], torch.Generator()), batch["frames"].float() / 255)


class _Crash(RuntimeError):
    pass


def test_a_resumed_video_run_replays_the_jitter(tiny_world, tmp_path, monkeypatch):
    config = {**_config(tiny_world, "depth_video", steps=4, scales=2), "state_every": 2}
    reference = load_checkpoint(run_pretrain(config, tmp_path / "ref", **QUIET))
    original, calls = dv.DepthVideo.loss, {"n": 0}

    def crashing(self, gen, batch_size):
        calls["n"] += 1
        if calls["n"] == 4:  # after the snapshot at step 2
            raise _Crash()
        return original(self, gen, batch_size)

    monkeypatch.setattr(dv.DepthVideo, "loss", crashing)
    with pytest.raises(_Crash):
        run_pretrain(config, tmp_path / "run", **QUIET)
    monkeypatch.setattr(dv.DepthVideo, "loss", original)
    resumed = load_checkpoint(run_pretrain(config, tmp_path / "run", **QUIET))
    for k, v in reference.encoder.items():
        torch.testing.assert_close(resumed.encoder[k], v, rtol=1e-5, atol=1e-6)


# --- 2b. KITTI depth range ------------------------------------------------------------------------

def _kitti_config(kitti, method, **options):
    return {**_config(kitti, method, **options), "dataset": "kitti_raw", "data_id": "kitti", "resize": [40, 64]}


def test_self_supervised_depth_uses_monodepth2s_kitti_range(kitti, tmp_path):
    video = build_method(_kitti_config(kitti, "depth_video"))
    assert (video.min_depth, video.max_depth) == (0.1, 100.0) and video.decoder_meta()["max_depth"] == 100.0
    assert build_method(_kitti_config(kitti, "depth_stereo")).max_depth == 100.0
    assert build_method(_kitti_config(kitti, "depth_video", max_depth=80.0)).max_depth == 80.0
    # Supervised depth keeps the evaluation range of the source.
    supervised = build_method({**_kitti_config(kitti, "depth_supervised"), "source_options": {"depth": "velodyne"}})
    assert supervised.max_depth == 80.0
    # The pseudo-labelled source (depth_distill) passes it on.
    labels = fake_pseudo_labels(tmp_path / "pl", "kitti_raw", kitti)
    assert PseudoLabelled(open_source("kitti_raw", kitti), labels).self_supervised_max_depth == 100.0
    assert build_method(_kitti_config(kitti, "depth_distill", pseudo_labels=str(labels))).max_depth == 100.0


def test_other_sources_keep_their_range(tiny_world):
    source = open_source("synth", tiny_world)
    assert build_method(_config(tiny_world, "depth_video")).max_depth == source.max_depth


# --- 2c. the pose encoder from the --init weights --------------------------------------------------

def test_pose_encoder_starts_from_the_init_weights_like_monodepth2(tiny_world, tmp_path):
    path, expected = _imagenet_style_file(tmp_path)
    task = build_method({**_config(tiny_world, "depth_video", pose_init="init"), "init": str(path)})
    pose = task.pose_net.encoder.state_dict()
    doubled = [k for k in expected if pose[k].shape != expected[k].shape]
    assert doubled == ["conv1.0.weight"]  # resnet10t's stem: the only 3-channel input
    for k, v in expected.items():
        want = torch.cat([v, v], 1) / 2 if k in doubled else v
        assert torch.equal(pose[k], want), k
    # Two equal frames give the encoder's own first response.
    x = torch.rand(1, 3, 16, 16)
    stem, pose_stem = task.encoder.conv1[0], task.pose_net.encoder.conv1[0]
    torch.testing.assert_close(pose_stem(torch.cat([x, x], 1)), stem(x))
    # The default stays a randomly initialised pose encoder.
    plain = build_method({**_config(tiny_world, "depth_video"), "init": str(path)})
    assert not torch.equal(plain.pose_net.encoder.state_dict()["layer1.0.conv1.weight"], expected["layer1.0.conv1.weight"])


def test_pose_encoder_from_a_harness_checkpoint(tiny_world, tiny_depth_ckpt):
    task = build_method({**_config(tiny_world, "depth_video", pose_init="init"), "init": str(tiny_depth_ckpt)})
    encoder = load_checkpoint(tiny_depth_ckpt).encoder
    pose = task.pose_net.encoder.state_dict()
    assert torch.equal(pose["layer4.0.conv1.weight"], encoder["layer4.0.conv1.weight"])


def test_pose_init_errors_are_one_line(tiny_world, tmp_path):
    with pytest.raises(UserError, match="pose_init=init needs --init FILE") as exc:
        build_method(_config(tiny_world, "depth_video", pose_init="init"))
    assert "\n" not in str(exc.value)
    path, _ = _imagenet_style_file(tmp_path)
    with pytest.raises(UserError, match="pose_arch=resnet18 differs from --arch resnet10t") as exc:
        build_method({**_config(tiny_world, "depth_video", pose_init="init", pose_arch="resnet18"), "init": str(path)})
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="option pose_init"):
        build_method(_config(tiny_world, "depth_video", pose_init="imagenet"))


# --- the CLI and a manifest ---------------------------------------------------------------------------

def test_the_recipes_from_the_cli(kitti, tmp_path):
    labels = fake_pseudo_labels(tmp_path / "pl", "kitti_raw", kitti)
    init, _ = _imagenet_style_file(tmp_path)
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("2011_09_26 2011_09_26_drive_0001_sync 0000000002\n")
    out = tmp_path / "run"
    assert main(["pretrain", "--method", "depth_distill", "--arch", "resnet10t", "--dataset", "kitti_raw",
                 "--root", str(kitti), "--steps", "1", "--batch-size", "2", "--resize", "40x64", "--init", str(init),
                 "-o", f"pseudo_labels={labels}", "-o", "pose_arch=resnet10t", "-o", "pose_init=init",
                 "-o", "ssi_loss=midas_lsq", "-o", "color_jitter=false", "-o", "smoothness=0.001",
                 "--source-option", f"exclude={exclude}", "--source-option", "exclude_margin=1",
                 "--out", str(out), "--no-progress"]) == 0
    meta = load_checkpoint(out / "checkpoint.safetensors").meta
    options = meta["config"]["options"]
    assert (options["pose_init"], options["ssi_loss"], options["color_jitter"], options["smoothness"]) == \
        ("init", "midas_lsq", False, 0.001)
    assert meta["config"]["source_options"] == {"exclude": str(exclude), "exclude_margin": 1}
    assert "exclude_sha256" in meta["config"]["source_content_ids"]
    assert meta["decoder"]["max_depth"] == 100.0 and meta["pseudo_labels"]["ssi_loss"] == "midas_lsq"
    with open(out / "history.csv") as f:
        assert "pseudo_ssi" in f.readline()


def test_the_recipes_from_a_manifest(kitti, tmp_path):
    from bench.study.manifest import load_manifest
    from bench.study.runner import pretrain_config
    from conftest import tiny_manifest

    init, _ = _imagenet_style_file(tmp_path)
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("2011_09_26/2011_09_26_drive_0001_sync 2\n")
    line = (f"  - {{name: kd, arch: resnet10t, pretrain: {{method: depth_video, dataset: kitti_raw, root: {kitti}, "
            f"init: {init}, options: {{pose_arch: resnet10t, pose_init: init, color_jitter: false, max_depth: 90}}, "
            f"source_options: {{exclude: {exclude}, exclude_margin: 1}}}}}}")
    manifest = load_manifest(tiny_manifest(tmp_path, extra_backbones=line))
    backbone = next(b for b in manifest.backbones if b.name == "kd")
    config = resolve_config(pretrain_config(backbone, kitti, "unused"))
    assert config["options"]["pose_init"] == "init" and config["options"]["color_jitter"] is False
    assert config["source_options"] == {"exclude": str(exclude), "exclude_margin": 1}
    task = build_method({**config, "resize": [40, 64]})
    # Frame 2 of the first drive and its margin (1, 3) are excluded: no video item of that drive is left.
    assert task.max_depth == 90.0 and task.batches.ids and all(i.startswith("2011_09_28/") for i in task.batches.ids)
    bad = line.replace("color_jitter: false", "ssi_loss: lsq")
    with pytest.raises(UserError, match="ssi_loss"):
        load_manifest(tiny_manifest(tmp_path, name="bad", extra_backbones=bad.replace("depth_video", "depth_distill")))


def test_new_defaults_change_only_the_self_supervised_depth_fingerprints(tiny_world):
    # The new options are part of the resolved options of the three self-supervised depth methods
    # (their defaults change what they compute); other methods' resolved configs are untouched.
    for method in ("depth_video", "depth_stereo"):
        options = resolve_config(_config(tiny_world, method))["options"]
        assert options["color_jitter"] is True
    supervised = resolve_config({**_config(tiny_world, "depth_supervised"), "options": {}})
    assert "source_content_ids" not in supervised and "color_jitter" not in supervised["options"]
    a = pretrain_fingerprint(resolve_config(_config(tiny_world, "depth_video")))
    b = pretrain_fingerprint(resolve_config(_config(tiny_world, "depth_video", color_jitter=False)))
    assert a != b
