"""The linear probe on a ViT's tokens, as DINOv2 evaluates segmentation ("lin."): the last block's
(or the last four blocks') final-norm'd patch tokens, optionally with the class token concatenated
to every patch, BatchNorm, a 1x1 convolution, and a bilinear upsampling to the image. CNN linear
cells keep their per-level head's parameters (its geometry and loss: tests/test_grid_loss.py)."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.cli import main
from bench.core.errors import UserError
from bench.core.models.backbones import create_encoder
from tests.conftest import cell_config
from transfer.api import Cell, run_cell
from transfer.decoders import decoder_class, parse_decoder_options
from transfer.decoders.linear import LinearHead
from transfer.model import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_VIT = "vit_tiny_patch16_224"  # 12 blocks of width 192, patch 16, a class token
FORMS = [({}, [11], False), ({"vit_tokens": "last4"}, [8, 9, 10, 11], False),
         ({"class_token": True}, [11], True), ({"vit_tokens": "last4", "class_token": True}, [8, 9, 10, 11], True)]


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return create_encoder(TINY_VIT).eval()


def _head(vit, options, num_classes=5) -> LinearHead:
    return decoder_class("linear")(vit.channels, vit.strides, num_classes, parse_decoder_options("linear", options))


@pytest.mark.parametrize("options, blocks, cls", FORMS)
def test_shapes_on_the_token_grid_of_a_padded_image(vit, options, blocks, cls):
    head = _head(vit, options)
    assert head.form == ("last4" if len(blocks) == 4 else "last") and head.blocks == blocks
    x = torch.randn(2, 3, 44, 100)  # padded to 48 x 112: a 3 x 7 grid
    with torch.no_grad():
        prepared = head.prepare(vit(x))
        scores = head.eval()(prepared, (44, 100))
    assert [tuple(t.shape) for t in prepared] == [(2, 192 * len(blocks) * (2 if cls else 1), 3, 7)]
    assert scores.shape == (2, 5, 44, 100) and torch.isfinite(scores).all()
    assert head.bn.num_features == prepared[0].shape[1] == head.classifier.in_channels
    width = prepared[0].shape[1]
    assert sum(p.numel() for p in head.parameters()) == 2 * width + 5 * width + 5  # BN affine, conv: all that learns


def _dinov2_bnhead(inputs, bn, conv_weight, conv_bias, image_size):
    """A transcription of DINOv2's segmentation `BNHead` with `input_transform="resize_concat"`:
    list inputs (patch grid, class token) are flattened, 2-D descriptors become 1x1 maps, every
    input is resized (bilinear) to the first one's size and concatenated, then BatchNorm, the
    1x1 `conv_seg`, and mmseg's resize of the logits to the image."""
    flat = []
    for x in inputs:
        flat.extend(x if isinstance(x, (list, tuple)) else [x])
    flat = [x[:, :, None, None] if x.dim() == 2 else x for x in flat]
    flat = [F.interpolate(x, size=flat[0].shape[2:], mode="bilinear", align_corners=False) for x in flat]
    feats = bn(torch.cat(flat, dim=1))
    logits = F.conv2d(feats, conv_weight, conv_bias)
    return F.interpolate(logits, size=image_size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("options, blocks, cls", FORMS)
def test_the_probe_is_dinov2s_head_on_the_same_tokens(vit, options, blocks, cls):
    import timm

    plain = timm.create_model(TINY_VIT, pretrained=False, num_classes=0, dynamic_img_size=True).eval()
    plain.load_state_dict(vit.state_dict())
    x = torch.randn(2, 3, 48, 144)  # a multiple of the patch: DINOv2 pads nothing either
    with torch.no_grad():
        # DINOv2's backbone call: get_intermediate_layers(n=blocks, reshape=True, norm=True[, return_class_token])
        theirs = plain.forward_intermediates(x, indices=blocks, norm=True, output_fmt="NCHW", intermediates_only=True,
                                             return_prefix_tokens=True)
    inputs = [(grid, prefix[:, 0]) if cls else grid for grid, prefix in theirs]
    width = 192 * len(blocks) * (2 if cls else 1)
    gen = torch.Generator().manual_seed(1)
    bn = nn.BatchNorm2d(width).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(width, generator=gen))
        bn.running_var.copy_(torch.rand(width, generator=gen) + 0.5)
        bn.weight.copy_(torch.randn(width, generator=gen))
        bn.bias.copy_(torch.randn(width, generator=gen))
    weight, bias = torch.randn(5, width, 1, 1, generator=gen) * 0.05, torch.randn(5, generator=gen)
    head = _head(vit, options).eval()
    head.bn.load_state_dict(bn.state_dict())
    head.classifier.load_state_dict({"weight": weight, "bias": bias})
    with torch.no_grad():
        ours = head(head.prepare(vit(x)), (48, 144))
        want = _dinov2_bnhead(inputs, bn, weight, bias, (48, 144))
    assert ours.shape == want.shape == (2, 5, 48, 144)
    torch.testing.assert_close(ours, want, rtol=0, atol=1e-5)


def test_the_tokens_form_is_the_default_for_vits_and_levels_stays_available(vit):
    assert _head(vit, {}).form == "last"
    levels = _head(vit, {"vit_tokens": "levels"})
    assert levels.form == "levels" and levels.levels == [0, 1, 2, 3] and len(levels.bns) == 4
    with torch.no_grad():
        features = levels.prepare(vit(torch.randn(1, 3, 48, 144)))
    assert type(features) is list and [f.shape[-1] for f in features] == [36, 18, 9, 5]


def test_cnn_linear_heads_keep_their_parameters(tiny_world):
    resnet = create_encoder("resnet10t")
    torch.manual_seed(3)
    head = _head(resnet, {}, num_classes=7)
    # The head as it was built before the ViT form existed, from the same seed.
    torch.manual_seed(3)
    levels = [i for i, s in enumerate(resnet.strides) if s >= 4]
    bns = nn.ModuleList(nn.BatchNorm2d(resnet.channels[i]) for i in levels)
    convs = nn.ModuleList(nn.Conv2d(resnet.channels[i], 7, 1, bias=(k == 0)) for k, i in enumerate(levels))
    old = {**{f"bns.{k}": v for k, v in bns.state_dict().items()},
           **{f"classifiers.{k}": v for k, v in convs.state_dict().items()}}
    new = head.state_dict()
    assert head.form == "levels" and list(new) == list(old) and all(torch.equal(new[k], old[k]) for k in old)
    # CNN linear cells name their loss (the grid loss, tests/test_grid_loss.py), so records of the
    # per-pixel loss they trained with before are re-run (tests/test_fingerprints.py pins one);
    # set options are part of the fingerprint.
    cell = Cell("b", "m", "resnet10t", "synth", "linear", "linear", 4, 0)
    assert cell_config(tiny_world, cell)["decoder_options"] == {"loss_at": "grid"}
    vit_cell = Cell("b", "m", TINY_VIT, "synth", "linear", "linear", 4, 0)
    set_ = cell_config(tiny_world, vit_cell, decoder_options={"linear": {"vit_tokens": "last4"}})
    assert set_["decoder_options"] == {"vit_tokens": "last4"}
    assert set_["fingerprint"] != cell_config(tiny_world, vit_cell)["fingerprint"]


@pytest.mark.parametrize("options, message", [
    ({"vit_tokens": "last"}, "is not a harness ViT; use vit_tokens=levels"),
    ({"class_token": True}, "class_token: needs vit_tokens last or last4"),
])
def test_token_options_on_a_cnn_are_one_line_errors(options, message):
    with pytest.raises(UserError, match=message) as exc:
        build_model("resnet10t", None, "linear", "encoder", 7, options)
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="option class_token: .*needs vit_tokens last or last4"):
        parse_decoder_options("linear", {"vit_tokens": "levels", "class_token": True})


def test_a_tiny_vit_linear_cell_trains_on_cached_tokens(tiny_world, tmp_path, monkeypatch):
    seen = []
    prepare = LinearHead.prepare

    def spy(self, features):
        out = prepare(self, features)
        seen.append((self.form, tuple(out[0].shape[1:])))
        return out

    monkeypatch.setattr(LinearHead, "prepare", spy)
    cell = Cell("vit", "none", TINY_VIT, "synth", "linear", "linear", 4, 0)
    record = run_cell(cell_config(tiny_world, cell, steps=4, batch_size=2, eval_every=2), tmp_path, progress=False)
    assert record["status"] == "ok" and 0 <= record["metrics"]["miou"] <= 1
    assert record["encoder_sha256_before"] == record["encoder_sha256_after"]
    assert seen and set(seen) == {("last", (192, 3, 9))}  # 48 x 144 images: a 3 x 9 token grid
    cache = record["feature_cache"]
    assert cache["bytes_in_memory"] == cache["computed"] * 192 * 3 * 9 * 4  # the cache holds the BN input


def test_cli_and_manifest_set_the_token_form(tiny_world, tmp_path, capsys):
    out = tmp_path / "cell"
    code = main(["transfer", "--checkpoint", "none", "--arch", TINY_VIT, "--root", str(tiny_world),
                 "--protocol", "linear", "--decoder-option", "vit_tokens=last4", "--decoder-option", "class_token=true",
                 "--train-size", "2", "--steps", "2", "--batch-size", "2", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok" and record["config"]["decoder_options"] == {"vit_tokens": "last4",
                                                                                 "class_token": True}
    from bench.study.manifest import load_manifest

    text = ("name: m\nbackbones: [{name: v, arch: %s}]\ndatasets: [{name: synth}]\n"
            "transfer:\n  protocols: [linear]\n  decoder_options: {linear: {vit_tokens: %s}}\n")
    path = tmp_path / "m.yaml"
    path.write_text(text % (TINY_VIT, "last4"))
    assert load_manifest(path).transfer.decoder_options["linear"] == {"vit_tokens": "last4"}
    path.write_text(text % (TINY_VIT, "all"))
    with pytest.raises(UserError, match="vit_tokens") as exc:
        load_manifest(path)
    assert "\n" not in str(exc.value)


def test_a_vit_linear_cell_names_its_head_form_in_the_fingerprint():
    from transfer.api import Cell, TransferSettings, resolve_cell_config

    kw = {"dataset": {"name": "synth"}, "dataset_root": "/x", "data_id": "w", "checkpoint": "/c", "checkpoint_sha256": "a"}
    vit = resolve_cell_config(Cell("b", "m", "vit_tiny_patch16_224", "synth", "linear", "linear", 4, 0),
                              TransferSettings(), **kw)
    assert vit["decoder_options"] == {"vit_tokens": "last"}  # a per-level ViT record made before is not current
    explicit = resolve_cell_config(Cell("b", "m", "vit_tiny_patch16_224", "synth", "linear", "linear", 4, 0),
                                   TransferSettings(decoder_options={"linear": {"vit_tokens": "last"}}), **kw)
    assert explicit["fingerprint"] == vit["fingerprint"]
    cnn = resolve_cell_config(Cell("b", "m", "resnet10t", "synth", "linear", "linear", 4, 0), TransferSettings(), **kw)
    assert cnn["decoder_options"] == {"loss_at": "grid"}  # the per-level head names its loss
    levels = resolve_cell_config(Cell("b", "m", "vit_tiny_patch16_224", "synth", "linear", "linear", 4, 0),
                                 TransferSettings(decoder_options={"linear": {"vit_tokens": "levels"}}), **kw)
    assert levels["decoder_options"] == {"vit_tokens": "levels", "loss_at": "grid"}
