"""Protocols, decoders, optimiser presets and the frozen-feature cache of transfer cells."""

import json

import pytest
import torch

import transfer.train as train_mod
from bench.core.checkpoint import load_checkpoint, state_sha256
from bench.cli import main
from bench.core.errors import UserError
from tests.conftest import cell_config
from tests.margins import assert_below
from transfer.api import Cell, run_cell
from transfer.data import dataset_settings, open_transfer_data
from transfer.decoders import decoder_slug, list_decoders, parse_decoder_options
from transfer.model import build_model
from transfer.protocols import BUILTIN_PRESETS, OptimizerPreset, lr_factor, preset_key_problem, resolve_preset


def _run(tiny_world, ckpt, out, *, protocol="linear", decoder=None, steps=4, train_size=4, dataset=None,
         optim=None, **kw):
    decoder = decoder or ("linear" if protocol == "linear" else "monodepth2")
    cell = Cell("b", "m", "resnet10t", "synth", protocol, decoder, train_size, 0)
    config = cell_config(tiny_world, cell, checkpoint=ckpt, dataset=dataset, steps=steps, batch_size=2, eval_every=2,
                         optim=optim, **kw)
    return run_cell(config, out, progress=False)


def _capture_predictions(monkeypatch) -> list:
    """Every label map the evaluation scores, in order (per batch: each head's, image by image)."""
    seen = []
    count = train_mod.confusion_matrices

    def spy(preds, target, *args):
        seen.extend(p.clone() for head in preds for p in head)
        return count(preds, target, *args)

    monkeypatch.setattr(train_mod, "confusion_matrices", spy)
    return seen


# -- frozen means frozen -------------------------------------------------------------------------

@pytest.mark.parametrize("protocol, decoder, cache", [("frozen", "monodepth2", False), ("frozen", "deeplabv3", True),
                                                      ("linear", "linear", False)])
def test_frozen_encoders_and_their_batchnorm_buffers_do_not_move(tiny_world, tiny_depth_ckpt, tmp_path, protocol,
                                                                 decoder, cache):
    record = _run(tiny_world, tiny_depth_ckpt, tmp_path, protocol=protocol, decoder=decoder, init="encoder",
                  feature_cache=cache)
    assert record["status"] == "ok"
    assert record["encoder_sha256_before"] == record["encoder_sha256_after"] == state_sha256(
        load_checkpoint(tiny_depth_ckpt).encoder)
    assert (record["feature_cache"] is not None) == cache


def test_full_protocol_moves_weights_and_batchnorm_statistics(tiny_world, tiny_depth_ckpt, tmp_path, monkeypatch):
    finals = {}
    original = train_mod.state_sha256

    def spy(state):
        finals.update({k: v.clone() for k, v in state.items() if "running_mean" in k})
        return original(state)

    monkeypatch.setattr(train_mod, "state_sha256", spy)
    record = _run(tiny_world, tiny_depth_ckpt, tmp_path, protocol="full", decoder="deeplabv3", init="encoder")
    assert record["encoder_sha256_before"] != record["encoder_sha256_after"]
    saved = load_checkpoint(tiny_depth_ckpt).encoder
    assert any(not torch.equal(finals[k], saved[k]) for k in finals)  # BatchNorm statistics moved too
    assert record["feature_cache"] is None


# -- the feature cache ----------------------------------------------------------------------------

@pytest.mark.parametrize("augment", [False, True])
def test_cached_linear_probe_predicts_exactly_what_the_uncached_one_does(tiny_world, tiny_depth_ckpt, tmp_path,
                                                                       monkeypatch, augment):
    # Without a random crop a view is (image, flip): the cache holds every view the uncached cell
    # sees, so with or without flips both train on the same batches.
    seen = _capture_predictions(monkeypatch)
    plain = _run(tiny_world, tiny_depth_ckpt, tmp_path / "plain", steps=6, feature_cache=False, augment=augment)
    uncached = [p for p in seen]
    seen.clear()
    cached = _run(tiny_world, tiny_depth_ckpt, tmp_path / "cached", steps=6, feature_cache=True, augment=augment)
    assert len(seen) == len(uncached) > 0
    assert all(torch.equal(a, b) for a, b in zip(seen, uncached))
    assert [c["loss"] for c in cached["curve"]] == pytest.approx([c["loss"] for c in plain["curve"]], abs=1e-5)
    stats = cached["feature_cache"]
    assert stats["train_views"] == "exact" and stats["computed"] >= 1 and stats["hits"] >= 1
    # 4 training images (x2 flips with augmentation), the validation and evaluation sets, each encoded once.
    assert stats["computed"] <= 4 * (2 if augment else 1) + plain["dataset"]["num_validation_images"] + \
        plain["dataset"]["num_eval_images"]


def test_feature_cache_spills_to_disk_and_cleans_up(tiny_world, tiny_depth_ckpt, tmp_path, monkeypatch):
    seen = _capture_predictions(monkeypatch)
    _run(tiny_world, tiny_depth_ckpt, tmp_path / "memory", protocol="frozen", feature_cache=True)
    in_memory = list(seen)
    seen.clear()
    record = _run(tiny_world, tiny_depth_ckpt, tmp_path / "disk", protocol="frozen", feature_cache=True)
    assert record["feature_cache"]["bytes_on_disk"] == 0  # the default budget holds the tiny world
    seen.clear()
    monkeypatch.setattr(train_mod, "DEFAULT_BUDGET_BYTES", 0)
    record = _run(tiny_world, tiny_depth_ckpt, tmp_path / "disk", protocol="frozen", feature_cache=True)
    assert record["feature_cache"]["bytes_in_memory"] == 0 and record["feature_cache"]["bytes_on_disk"] > 0
    assert all(torch.equal(a, b) for a, b in zip(seen, in_memory)) and len(seen) == len(in_memory)
    assert not (tmp_path / "disk" / "feature_cache").exists()


def test_with_a_random_crop_the_cache_samples_fixed_views(tiny_world, tiny_depth_ckpt, tmp_path):
    settings = dataset_settings("synth", crop="40x40")
    record = _run(tiny_world, tiny_depth_ckpt, tmp_path, dataset=settings, steps=6, feature_cache=True,
                  feature_cache_views=3)
    assert record["status"] == "ok" and record["feature_cache"]["train_views"] == "3 per image"
    assert record["config"]["feature_cache_views"] == 3  # part of the fingerprint: a different experiment
    _, _, train, _, _ = open_transfer_data(settings, tiny_world, 4, 0)
    views = train.fixed_views(1, 3, seed=0)
    assert views == train.fixed_views(1, 3, seed=0) and len(set(views)) == 3
    assert all(0 <= v.top and 0 <= v.left and v.index == 1 for v in views)


def test_uncropped_augmented_views_are_image_and_flip(tiny_world):
    _, _, train, _, _ = open_transfer_data(dataset_settings("synth"), tiny_world, 4, 0)
    gen = torch.Generator().manual_seed(0)
    views = [v for _ in range(10) for v in train.draw(gen, 4)]
    assert {(v.top, v.left) for v in views} == {(-1, -1)} and {v.flip for v in views} == {True, False}
    x, y = train.load([views[0]])
    flipped = train.load([type(views[0])(views[0].index, -1, -1, not views[0].flip)])
    assert torch.equal(x.flip(-1), flipped[0]) and torch.equal(y.flip(-1), flipped[1])


# -- decoders -------------------------------------------------------------------------------------

def _steps_lower_the_loss(model, tiny_world, steps=8, lr=1e-3):
    _, _, train, _, _ = open_transfer_data(dataset_settings("synth"), tiny_world, 4, 0)
    x, y = train.batch(torch.Generator().manual_seed(0), 4)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()

    def fixed_loss():
        # The same dropout masks (DeepLabV3's ASPP has one) before and after: without them a
        # no-op optimiser passed for one decoder by the masks' luck.
        torch.manual_seed(0)
        with torch.no_grad():
            return model.decoder.loss(model.features(x), y, 255).item()

    before = fixed_loss()
    for _ in range(steps):
        loss = model.decoder.loss(model.features(x), y, 255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, fixed_loss()


@pytest.mark.parametrize("decoder, options", [("monodepth2", {}), ("linear", {}), ("deeplabv3", {}),
                                              ("deeplabv3", {"output_stride": 8})])
def test_each_decoder_trains_and_predicts_at_image_size(tiny_world, decoder, options):
    torch.manual_seed(0)
    model, _ = build_model("resnet10t", None, decoder, "encoder", num_classes=7, decoder_options=options)
    before, after = _steps_lower_the_loss(model, tiny_world)
    assert_below(after, before, "decoder: loss on the batch after 8 steps vs before")
    model.eval()
    with torch.no_grad():
        scores = model(torch.zeros(1, 3, 48, 144, dtype=torch.uint8))
    assert scores.shape == (1, 7, 48, 144)


@pytest.mark.parametrize("stride", [8, 16])
def test_deeplabv3_dilates_the_encoder_to_its_output_stride(tiny_depth_ckpt, stride):
    ckpt = load_checkpoint(tiny_depth_ckpt)
    model, info = build_model("resnet10t", ckpt, "deeplabv3", "auto", num_classes=7,
                              decoder_options={"output_stride": stride})
    assert info["effective"] == "encoder" and info["encoder_coverage"]["missing"] == []
    # Same tensors as the checkpoint: dilation changes the computation, not the weights.
    assert state_sha256(model.encoder.state_dict()) == state_sha256(ckpt.encoder)
    features = model.eval().encode(torch.zeros(1, 3, 64, 128, dtype=torch.uint8))
    assert features[-1].shape[-2:] == (64 // stride, 128 // stride)
    assert model.decoder.used_levels(5) == [4]


def test_decoder_reuse_requests_the_checkpoint_cannot_satisfy_are_one_line_errors(tiny_depth_ckpt):
    ckpt = load_checkpoint(tiny_depth_ckpt)
    with pytest.raises(UserError, match="the linear decoder has no pre-trained counterpart") as exc:
        build_model("resnet10t", ckpt, "linear", "encoder+decoder", num_classes=7)
    assert "\n" not in str(exc.value)
    # deeplabv3 reuses a DeepLabV3 depth head (tests/test_deeplab_reuse.py), not this U-Net.
    with pytest.raises(UserError, match="needs deeplabv3 decoder weights, and this checkpoint has a monodepth2"):
        build_model("resnet10t", ckpt, "deeplabv3", "encoder+decoder", num_classes=7)
    with pytest.raises(UserError, match="needs monodepth2 decoder weights, and this checkpoint has no decoder"):
        build_model("resnet10t", None, "monodepth2", "encoder+decoder", num_classes=7)


def test_decoder_names_and_options_are_validated():
    assert {"monodepth2", "linear", "deeplabv3"} <= set(list_decoders())
    with pytest.raises(UserError, match="unknown decoder 'upernet'"):
        parse_decoder_options("upernet", {})
    with pytest.raises(UserError, match="output_stride"):
        parse_decoder_options("deeplabv3", {"output_stride": 32})
    with pytest.raises(UserError, match="option stride: Extra inputs"):
        parse_decoder_options("deeplabv3", {"stride": 8})
    assert decoder_slug("mmseg:/x/configs/my aspp.py") == "mmseg-my_aspp"


# -- optimiser presets ----------------------------------------------------------------------------

def test_presets_layer_protocol_then_decoder_then_the_user():
    assert resolve_preset("full", "monodepth2") == OptimizerPreset(**BUILTIN_PRESETS["full"])
    dl = resolve_preset("frozen", "deeplabv3")
    assert (dl.optimizer, dl.lr, dl.momentum) == ("sgd", 1e-2, 0.9)
    m2f = resolve_preset("full", "mask2former")
    assert (m2f.optimizer, m2f.lr, m2f.encoder_lr_mult, m2f.weight_decay) == ("adamw", 1e-4, 0.1, 0.05)
    user = {"full": {"lr": 5e-4}, "full/deeplabv3": {"optimizer": "adamw"}}
    mixed = resolve_preset("full", "deeplabv3", user)
    assert (mixed.optimizer, mixed.lr, mixed.momentum) == ("adamw", 5e-4, 0.9)
    assert resolve_preset("full", "mmseg:/a/b.py", {"full/mmseg": {"lr": 3e-3}}).lr == 3e-3
    assert preset_key_problem("fine/deeplabv3").startswith("optimizer preset 'fine/deeplabv3': unknown protocol")


def test_warmup_then_poly_schedule_by_hand():
    # 10 steps, 2 warm-up: 1/2, 1, then (1 - k/8)^0.9 for k = 1..8 after the warm-up ends.
    factors = [lr_factor(s, 10, 2, 0.9) for s in range(10)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert factors[3] == pytest.approx((1 - 1 / 8) ** 0.9) and factors[9] == pytest.approx((1 - 7 / 8) ** 0.9)


def test_sgd_preset_builds_sgd_with_momentum(tiny_world, tmp_path):
    record = _run(tiny_world, None, tmp_path, protocol="frozen", decoder="deeplabv3", steps=2)
    assert record["optimizer"]["optimizer"] == "sgd" and record["status"] == "ok"
    assert "optimizer {'optimizer': 'sgd'" in (tmp_path / "log.txt").read_text()


# -- CLI and manifest -----------------------------------------------------------------------------

def test_cli_runs_deeplabv3_with_options_and_an_override(tiny_world, tiny_depth_ckpt, tmp_path, capsys):
    out = tmp_path / "cell"
    code = main(["transfer", "--checkpoint", str(tiny_depth_ckpt), "--root", str(tiny_world), "--protocol", "full",
                 "--decoder", "deeplabv3", "--decoder-option", "output_stride=8", "--init", "encoder",
                 "--train-size", "2", "--steps", "2", "--batch-size", "2", "--lr", "0.02", "--out", str(out),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "record.json").read_text())
    assert record["cell"]["decoder"] == "deeplabv3" and record["config"]["decoder_options"] == {"output_stride": 8}
    assert record["optimizer"]["lr"] == 0.02 and record["optimizer"]["optimizer"] == "sgd"


@pytest.mark.parametrize("args, message", [
    (["--decoder", "upernet"], "unknown decoder 'upernet'"),
    (["--decoder", "deeplabv3", "--decoder-option", "output_stride=4"], "output_stride"),
    (["--decoder", "deeplabv3", "--init", "encoder+decoder"], "needs deeplabv3 decoder weights"),
])
def test_cli_decoder_mistakes_are_one_line(tiny_world, tmp_path, capsys, args, message):
    code = main(["transfer", "--checkpoint", "none", "--arch", "resnet10t", "--root", str(tiny_world),
                 "--protocol", "full", "--steps", "1", "--train-size", "2", "--out", str(tmp_path / "x"), "--no-progress", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err
    assert not (tmp_path / "x" / "record.json").exists()


def test_manifest_runs_every_protocol_decoder_and_init(tmp_path):
    from bench.study.runner import run_manifest

    manifest = tmp_path / "decoders.yaml"
    manifest.write_text(f"""
name: decoders
out: {tmp_path / 'results'}
data:
  synth: {{sequences: 3, frames: 4, height: 48, width: 144, seed: 0, crops_per_class: 6}}
backbones:
  - {{name: random, arch: resnet10t}}
  - name: depth
    arch: resnet10t
    pretrain: {{method: depth_supervised, steps: 2, batch_size: 2}}
datasets: [{{name: synth}}]
transfer:
  protocols: [full, frozen, linear]
  decoders: [monodepth2, deeplabv3, mask2former]
  decoder_options:
    deeplabv3: {{output_stride: 8}}
    mask2former: {{hidden_dim: 32, num_queries: 4, decoder_layers: 2, pixel_decoder_layers: 1, train_points: 256}}
  optimizer:
    frozen/deeplabv3: {{lr: 0.02}}
  train_sizes: [2]
  steps: 2
  batch_size: 2
  eval_every: 2
""")
    assert run_manifest(manifest, progress=False, plots=False) == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("*/record.json")]
    seen = {(r["cell"]["backbone"], r["cell"]["protocol"], r["cell"]["decoder"], r["init"]["effective"])
            for r in records}
    assert len(records) == 14 and all(r["status"] == "ok" for r in records)
    # The depth checkpoint's decoder is reused by the U-Net only; the other heads start fresh.
    assert ("depth", "full", "monodepth2", "encoder+decoder") in seen
    assert ("depth", "frozen", "deeplabv3", "encoder") in seen and ("random", "full", "mask2former", "none") in seen
    by_cell = {(r["cell"]["backbone"], r["cell"]["protocol"], r["cell"]["decoder"]): r for r in records}
    assert by_cell["depth", "frozen", "deeplabv3"]["optimizer"]["lr"] == 0.02
    assert by_cell["depth", "full", "deeplabv3"]["optimizer"]["lr"] == 1e-2
    assert by_cell["depth", "full", "deeplabv3"]["config"]["decoder_options"] == {"output_stride": 8}
    for r in records:
        frozen = r["cell"]["protocol"] != "full"
        assert (r["encoder_sha256_before"] == r["encoder_sha256_after"]) == frozen


@pytest.mark.parametrize("transfer, message", [
    ("decoders: [upernet]", "unknown decoder 'upernet'"),
    ("decoder_options: {deeplabv3: {output_stride: 4}}\n  decoders: [deeplabv3]", "output_stride"),
    ("decoder_options: {mask2former: {num_queries: 4}}", "'mask2former' is not in transfer.decoders"),
    ("optimizer: {fine: {lr: 0.1}}", "unknown protocol 'fine'"),
    ("optimizer: {full: {optimizer: adam}}", "optimizer"),
])
def test_manifest_decoder_and_optimizer_mistakes_are_one_line(tmp_path, transfer, message):
    from bench.study.manifest import load_manifest

    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\nbackbones: [{{name: r, arch: resnet10t}}]\ndatasets: [{{name: synth}}]\n"
                    f"transfer:\n  {transfer}\n")
    with pytest.raises(UserError, match=message) as exc:
        load_manifest(path)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)
