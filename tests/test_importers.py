"""Foreign checkpoint import (bench.importers): every format converts exactly, bad files are refused.

Each fixture is a randomly initialised model written in that format's exact key layout
(tests/fixtures/checkpoint_formats.py); a conversion must find every encoder tensor and write it
bit-identical, and auto-detection must name the format.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from safetensors.torch import save_file

from bench.core.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from bench.importers import convert, detect_format, read_foreign, validate
from bench.core.models.backbones import create_encoder, list_backbones
from bench.core.models.unet_decoder import UNetDecoder
from tests.fixtures import checkpoint_formats as cf
from tests.fixtures import one_line_error

RESNET_CHANNELS = [64, 64, 128, 256, 512]  # resnet18's and resnet10t's five levels


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def r18():
    return cf.torchvision_resnet18_state()


@pytest.fixture(scope="module")
def r10t():
    return cf.timm_state("resnet10t")


@pytest.fixture(scope="module")
def vit_tiny():
    return _vit("vit_tiny_patch16_224")


@pytest.fixture(scope="module")
def vit_dinov2():
    return _vit("vit_small_patch14_dinov2")


def _vit(arch):
    """The encoder's own state dict (timm names, no head) for a registered ViT arch."""
    if arch not in list_backbones():
        pytest.skip(f"ViT arch {arch} is not registered")
    torch.manual_seed(0)
    return create_encoder(arch).state_dict()


def _assert_exact(out, expected: dict, fmt: str, arch: str):
    """The written checkpoint holds exactly `expected`, bit for bit, with the import's provenance."""
    ckpt = load_checkpoint(out)
    assert set(ckpt.encoder) == set(expected)
    for k, v in expected.items():
        assert torch.equal(ckpt.encoder[k], v), k
    meta = ckpt.meta
    assert meta["arch"] == arch and meta["method"] == f"imported:{fmt}" and meta["steps"] == 0
    prov = meta["provenance"]
    assert prov["format"] == fmt and prov["key_report"]["loaded"] == prov["key_report"]["total"]
    assert all(file_sha256(p) == h for p, h in prov["sources"].items())
    return ckpt


# --- every format, end to end -------------------------------------------------------------------

def _cnn_case(name, tmp_path, r18, r10t):
    """(path, arch, expected encoder tensors) of one CNN-format fixture."""
    if name == "torchvision":
        torch.save(r18, tmp_path / "resnet18-f37072fd.pth")
        return tmp_path / "resnet18-f37072fd.pth", "resnet18", cf.encoder_part(r18)
    if name == "timm":
        save_file(r10t, str(tmp_path / "model.safetensors"))  # the hub's safetensors form
        return tmp_path / "model.safetensors", "resnet10t", cf.encoder_part(r10t)
    if name == "moco":
        return cf.write_moco_v2(tmp_path / "moco_v2_800ep_pretrain.pth.tar", r10t), "resnet10t", cf.encoder_part(r10t)
    if name == "nimbled":
        cf.write_nimbled_folder(tmp_path / "weights_19", cf.encoder_part(r10t), RESNET_CHANNELS)
        return tmp_path / "weights_19", "resnet10t", cf.encoder_part(r10t)
    if name == "depthtosemantic":
        path, _ = cf.write_depthtosemantic(tmp_path / "ckpt", cf.encoder_part(r10t), RESNET_CHANNELS)
        return path, "resnet10t", cf.encoder_part(r10t)
    raise AssertionError(name)


@pytest.mark.parametrize("fmt", ["torchvision", "timm", "moco", "nimbled", "depthtosemantic"])
def test_cnn_formats_convert_exactly(fmt, tmp_path, r18, r10t):
    path, arch, expected = _cnn_case(fmt, tmp_path, r18, r10t)
    out, report = convert(path, arch, tmp_path / "out.safetensors")
    assert report["format"] == fmt  # auto-detected
    assert report["loaded"] == report["total"] == len(expected) and not report["unexpected"]
    json.dumps(report)  # JSON-able
    _assert_exact(out, expected, fmt, arch)
    # Naming the format gives the same tensors.
    named = read_foreign(path, arch, fmt=fmt)
    assert set(named.encoder) == set(expected)


def test_moco_drops_what_is_not_the_query_encoder(tmp_path, r10t):
    imported = read_foreign(cf.write_moco_v2(tmp_path / "m.pth.tar", r10t), "resnet10t")
    assert "module.queue" in imported.dropped and "module.encoder_q.fc.0.weight" in imported.dropped
    assert any(k.startswith("module.encoder_k.") for k in imported.dropped)
    assert not any(k.startswith("fc.") for k in imported.encoder)


def test_depth_nets_bring_their_monodepth2_decoder(tmp_path, r10t):
    """NimbleD and DepthToSemantic save monodepth2's decoder layout: it maps, with its activation."""
    cf.write_nimbled_folder(tmp_path / "nimbled", cf.encoder_part(r10t), RESNET_CHANNELS)
    nimbled = read_foreign(tmp_path / "nimbled" / "depth_encoder.pth", "resnet10t")  # a file inside the folder
    assert nimbled.format == "nimbled" and nimbled.decoder_meta["activation"] == "relu"
    assert any("camera_encoder.pth" in n for n in nimbled.notes)
    path, raw = cf.write_depthtosemantic(tmp_path / "d2s", cf.encoder_part(r10t), RESNET_CHANNELS)
    d2s = read_foreign(path.parent, "resnet10t")  # the folder holding one encoder-<step>.pth
    assert d2s.format == "depthtosemantic" and len(d2s.sources) == 2
    assert torch.equal(d2s.decoder["upconvs.0.1.weight"], raw["decoder.0.conv.conv.weight"])
    out, report = convert(path, "resnet10t", tmp_path / "out.safetensors")
    assert report["decoder"]["kind"] == "monodepth2" and load_checkpoint(out).meta["decoder"]["kind"] == "monodepth2"


@pytest.mark.parametrize("fmt", ["dino", "mae", "depth_anything"])
def test_vit_methods_convert_exactly(fmt, tmp_path, vit_tiny):
    writer = {"dino": cf.write_dino, "mae": cf.write_mae, "depth_anything": cf.write_depth_anything}[fmt]
    path = writer(tmp_path / "checkpoint.pth", vit_tiny)
    out, report = convert(path, "vit_tiny_patch16_224", tmp_path / "out.safetensors")
    assert report["format"] == fmt and report["loaded"] == report["total"]
    assert report["probe"]["features"][0][0] == vit_tiny["cls_token"].shape[-1]
    _assert_exact(out, vit_tiny, fmt, "vit_tiny_patch16_224")


def test_dino_prefers_the_teacher(tmp_path, vit_tiny):
    imported = read_foreign(cf.write_dino(tmp_path / "checkpoint.pth", vit_tiny), "vit_tiny_patch16_224")
    assert torch.equal(imported.encoder["cls_token"], vit_tiny["cls_token"])  # the student's differ by +1
    assert any("teacher" in n for n in imported.notes) and "head.mlp.0.weight" in imported.dropped


def test_dinov2_training_checkpoint_with_chunked_blocks(tmp_path, vit_tiny):
    """DINOv2's own training checkpoints: {model: teacher.backbone.blocks.<chunk>.<index>.*, heads, student}."""
    chunked = {re.sub(r"^blocks\.(\d+)\.", lambda m: f"blocks.{int(m.group(1)) // 4}.{m.group(1)}.", k): v
               for k, v in vit_tiny.items()}
    state = {f"teacher.backbone.{k}": v for k, v in chunked.items()}
    state.update({f"student.backbone.{k}": v + 1 for k, v in chunked.items()})
    state.update({"teacher.backbone.mask_token": torch.zeros(1, 192),
                  "teacher.dino_head.mlp.0.weight": torch.zeros(8, 192),
                  "teacher.ibot_head.mlp.0.weight": torch.zeros(8, 192)})
    torch.save({"model": state, "iteration": 12500}, tmp_path / "model_0012499.rank_0.pth")
    imported = read_foreign(tmp_path / "model_0012499.rank_0.pth", "vit_tiny_patch16_224")
    assert imported.format == "dino" and set(imported.encoder) == set(vit_tiny)
    assert all(torch.equal(imported.encoder[k], v) for k, v in vit_tiny.items())


def test_dinov2_hub_converts_exactly(tmp_path, vit_dinov2):
    assert "blocks.0.ls1.gamma" in vit_dinov2  # the DINOv2 layout, layer scale included
    path = cf.write_dinov2_hub(tmp_path / "dinov2_vits14_pretrain.pth", vit_dinov2)
    out, report = convert(path, "vit_small_patch14_dinov2", tmp_path / "out.safetensors")
    assert report["format"] == "dino" and report["loaded"] == report["total"] and report["dropped"] == ["mask_token"]
    _assert_exact(out, vit_dinov2, "dino", "vit_small_patch14_dinov2")


def test_torchvision_vit_is_renamed_to_timm(tmp_path):
    """torchvision's ViT layout becomes timm's names, and the renamed weights compute the same tokens
    (a 2-block ViT: the renaming is per block, so depth adds nothing but time)."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    tv = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64).eval()
    torch.save(tv.state_dict(), tmp_path / "vit_tv.pth")
    imported = read_foreign(tmp_path / "vit_tv.pth", "vit_tiny_patch16_224")
    assert imported.format == "torchvision" and "heads.head.weight" in imported.dropped
    model = TimmViT(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2, num_classes=0).eval()
    model.load_state_dict(imported.encoder, strict=True)  # every name and shape matches timm's
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = tv.encoder(torch.cat([tv.class_token.expand(1, -1, -1), tv._process_input(x)], dim=1))
        assert torch.allclose(model.forward_features(x), expected, atol=1e-5)


# --- monodepth2 ---------------------------------------------------------------------------------

def test_monodepth2_folder_converts_encoder_and_decoder_exactly(tmp_path, r18):
    folder = tmp_path / "mono_640x192"
    raw = cf.write_monodepth2_folder(folder, r18, RESNET_CHANNELS)
    imported = read_foreign(folder, "resnet18")
    assert imported.format == "monodepth2" and imported.decoder_meta["scales"] == [0, 1, 2, 3]
    assert any("pose_encoder.pth" in n for n in imported.notes)
    assert "encoder.fc.weight" in imported.dropped
    # The converted decoder is the harness U-Net decoder's, strictly.
    decoder = UNetDecoder(RESNET_CHANNELS, 1, scales=(0, 1, 2, 3))
    decoder.load_state_dict(imported.decoder, strict=True)
    for t, i in enumerate(range(4, -1, -1)):  # upconv(i, 0) / upconv(i, 1) are blocks 2t and 2t+1
        assert torch.equal(imported.decoder[f"upconvs.{t}.1.weight"], raw[f"decoder.{2 * t}.conv.conv.weight"])
        assert torch.equal(imported.decoder[f"fuse.{t}.1.bias"], raw[f"decoder.{2 * t + 1}.conv.conv.bias"])
    for s in range(4):
        assert torch.equal(imported.decoder[f"heads.{s}.1.weight"], raw[f"decoder.{10 + s}.conv.weight"])
    # And it computes what monodepth2's DepthDecoder computes (sigmoid of the raw heads).
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, c, 32 // 2 ** i, 48 // 2 ** i, generator=gen) for i, c in enumerate(RESNET_CHANNELS)]
    with torch.no_grad():
        ours = decoder.eval()(feats, (64, 96))
        theirs = cf.monodepth2_forward(raw, feats)
    for s in range(4):
        assert torch.allclose(torch.sigmoid(ours[s]), theirs[s], atol=1e-6)

    out, report = convert(folder / "depth.pth", "resnet18", tmp_path / "out.safetensors")  # a file inside works too
    ckpt = _assert_exact(out, cf.encoder_part(r18), "monodepth2", "resnet18")
    assert ckpt.meta["decoder"]["kind"] == "monodepth2" and ckpt.meta["data"]["train_size"] == [192, 640]
    assert set(ckpt.decoder) == set(imported.decoder)
    assert all(torch.equal(ckpt.decoder[k], v) for k, v in imported.decoder.items())
    # The segmentation transfer takes over the whole decoder body (the heads are replaced).
    from transfer.model import build_model

    _, init = build_model("resnet18", ckpt, "monodepth2", "encoder+decoder", 7)
    assert init["effective"] == "encoder+decoder"
    assert init["decoder_tensors_loaded"] == sum(not k.startswith("heads.") for k in ckpt.decoder)
    assert len(report["sources"]) == 2


def test_monodepth2_decoder_of_a_subset_of_scales(tmp_path, r18):
    folder = tmp_path / "mono"
    cf.write_monodepth2_folder(folder, r18, RESNET_CHANNELS)
    torch.save(cf.monodepth2_depth_decoder(RESNET_CHANNELS, scales=[0]), folder / "depth.pth")
    imported = read_foreign(folder, "resnet18")
    assert sorted(k for k in imported.decoder if k.startswith("heads.")) == ["heads.0.1.bias", "heads.0.1.weight"]
    UNetDecoder(RESNET_CHANNELS, 1, scales=(0,)).load_state_dict(imported.decoder, strict=True)


def test_monodepth2_broken_decoder_is_refused(tmp_path, r18):
    folder = tmp_path / "mono"
    raw = cf.write_monodepth2_folder(folder, r18, RESNET_CHANNELS)
    del raw["decoder.3.conv.conv.bias"]
    torch.save(raw, folder / "depth.pth")
    assert "block 3" in one_line_error(read_foreign, folder, "resnet18")
    (folder / "encoder.pth").unlink()
    assert "lacks encoder.pth" in one_line_error(read_foreign, folder / "depth.pth", "resnet18")


# --- detection rules ------------------------------------------------------------------------------

@pytest.mark.parametrize("keys, values, opened, expected", [
    (["module.encoder_q.conv1.weight", "module.queue"], {}, ["state_dict"], "moco"),
    (["module.base_encoder.conv1.weight", "module.predictor.0.weight"], {}, ["state_dict"], "moco"),
    (["backbone.cls_token", "head.mlp.0.weight"], {}, ["teacher"], "dino"),
    (["teacher.backbone.blocks.0.0.norm1.weight", "teacher.dino_head.mlp.0.weight"], {}, ["model"], "dino"),
    (["cls_token", "mask_token", "blocks.0.ls1.gamma"], {}, [], "dino"),
    (["cls_token", "mask_token", "decoder_embed.weight"], {}, ["model"], "mae"),
    (["pretrained.cls_token", "depth_head.projects.0.weight"], {}, [], "depth_anything"),
    (["encoder.conv1.weight"], {"height": 192, "width": 640}, [], "monodepth2"),
    (["module.encoder.conv1.weight"], {}, ["model_state_dict"], "depthtosemantic"),
    (["encoder.conv1.weight"], {}, [], "nimbled"),
    (["class_token", "conv_proj.weight", "encoder.layers.encoder_layer_0.ln_1.weight"], {}, [], "torchvision"),
    (["conv1.weight", "layer1.0.conv1.weight", "fc.weight"], {}, [], "torchvision"),
    (["module.conv1.0.weight", "module.fc.weight"], {}, ["state_dict"], "timm"),
    (["cls_token", "blocks.0.attn.qkv.weight", "head.weight"], {}, [], "timm"),
])
def test_detection_rules(keys, values, opened, expected):
    assert detect_format({k: torch.zeros(1) for k in keys}, values, opened)[0] == expected


# --- refusals -----------------------------------------------------------------------------------

def test_partial_file_refused_unless_allowed(tmp_path, r10t):
    state = dict(r10t)
    del state["layer4.0.conv1.weight"]
    torch.save(state, tmp_path / "partial.pth")
    message = one_line_error(convert, tmp_path / "partial.pth", "resnet10t", tmp_path / "o.safetensors")
    assert "partial.pth" in message and "83/84" in message and "layer4.0.conv1.weight" in message
    assert not (tmp_path / "o.safetensors").exists()
    out, report = convert(tmp_path / "partial.pth", "resnet10t", tmp_path / "o.safetensors", allow_partial=True)
    assert report["missing"] == ["layer4.0.conv1.weight"] and report["allow_partial"]
    ckpt = load_checkpoint(out)
    assert ckpt.meta["provenance"]["allow_partial"] and ckpt.meta["provenance"]["key_report"]["missing"]
    # The written checkpoint is complete (the missing tensor keeps the arch's seed-0 init).
    assert set(ckpt.encoder) == set(create_encoder("resnet10t").state_dict())
    assert torch.equal(ckpt.encoder["layer1.0.conv1.weight"], r10t["layer1.0.conv1.weight"])


def test_shape_mismatch_refused(tmp_path, r10t):
    state = dict(r10t)
    state["layer2.0.conv1.weight"] = state["layer2.0.conv1.weight"][:, :32].clone()
    torch.save({"state_dict": state}, tmp_path / "mismatch.pth")
    message = one_line_error(validate, read_foreign(tmp_path / "mismatch.pth", "resnet10t"), "resnet10t")
    assert "mismatch.pth" in message and "layer2.0.conv1.weight" in message and "(128, 32, 3, 3)" in message


def test_wrong_arch_refused(tmp_path, r18):
    torch.save(r18, tmp_path / "r18.pth")
    message = one_line_error(convert, tmp_path / "r18.pth", "resnet10t", tmp_path / "o.safetensors")
    assert "r18.pth" in message and "--arch" in message


@pytest.mark.parametrize("where", ["encoder", "decoder"])
def test_nan_weights_refused(where, tmp_path, r18):
    folder = tmp_path / "mono"
    raw = cf.write_monodepth2_folder(folder, r18, RESNET_CHANNELS)
    if where == "encoder":
        state = {**cf.resnet_encoder_state(r18), "height": 192, "width": 640}
        state["encoder.layer3.1.bn2.weight"] = state["encoder.layer3.1.bn2.weight"].clone()
        state["encoder.layer3.1.bn2.weight"][5] = math.nan
        torch.save(state, folder / "encoder.pth")
        bad = "layer3.1.bn2.weight"
    else:
        raw["decoder.12.conv.weight"][0, 0, 0, 0] = math.inf
        torch.save(raw, folder / "depth.pth")
        bad = "heads.2.1.weight"
    message = one_line_error(convert, folder, "resnet18", tmp_path / "o.safetensors")
    assert bad in message and "NaN or Inf" in message


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["torch.save", "pickle2", "pickle4", "module"])
def test_malicious_or_object_pickles_refused_without_running(kind, tmp_path, r10t):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    if kind == "module":
        torch.save(torch.nn.Linear(2, 2), path)  # a pickled nn.Module: needs arbitrary classes
    else:
        protocol = {"torch.save": None, "pickle2": 2, "pickle4": 4}[kind]
        cf.write_malicious(path, marker, r10t, pickle_protocol=protocol)
    message = one_line_error(convert, path, "resnet10t", tmp_path / "o.safetensors")
    assert "evil.pth" in message and "bench convert" in message
    # torch's restricted unpickler stops a protocol-4 stream at its first frame, before any global.
    assert ("not a readable" if kind == "pickle4" else "refused") in message
    if kind != "pickle4":
        assert ("GLOBAL torch.nn.modules.linear.Linear" if kind == "module" else "exec") in message
    assert not marker.exists()  # the payload never ran
    assert not (tmp_path / "o.safetensors").exists()


def test_bad_inputs_are_one_line(tmp_path, r10t):
    (tmp_path / "garbage.pth").write_bytes(b"\x00not a checkpoint")
    assert "not a readable" in one_line_error(read_foreign, tmp_path / "garbage.pth", "resnet10t")
    assert "not found" in one_line_error(read_foreign, tmp_path / "nope.pth", "resnet10t")
    assert "unknown checkpoint format" in one_line_error(read_foreign, tmp_path / "garbage.pth", "resnet10t", fmt="x")
    (tmp_path / "empty").mkdir()
    assert "a folder, but not" in one_line_error(read_foreign, tmp_path / "empty", "resnet10t")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "depth_anything"}')
    assert "Hugging Face" in one_line_error(read_foreign, tmp_path / "hf", "vit_small_patch14_dinov2")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "noweights.pth")
    assert "no weights found" in one_line_error(read_foreign, tmp_path / "noweights.pth", "resnet10t")
    torch.save(cf.monodepth2_depth_decoder(RESNET_CHANNELS), tmp_path / "decoder_only.pth")
    assert "only a monodepth2 depth decoder" in one_line_error(read_foreign, tmp_path / "decoder_only.pth", "resnet10t")
    torch.save(r10t, tmp_path / "plain.pth")
    assert "where this format keeps its encoder" in one_line_error(read_foreign, tmp_path / "plain.pth", "resnet10t",
                                                                   fmt="moco")
    for step in (1, 2):
        cf.write_depthtosemantic(tmp_path / "two", cf.encoder_part(r10t), RESNET_CHANNELS, step=step)
    assert "pass the one" in one_line_error(read_foreign, tmp_path / "two", "resnet10t")


# --- key maps and harness checkpoints -----------------------------------------------------------

@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_key_map_renames_and_drops(suffix, tmp_path, r10t):
    state = {f"trunk.{k}": v for k, v in cf.encoder_part(r10t).items()}
    state["aux_head.weight"] = torch.randn(3, 3)
    torch.save({"model": state}, tmp_path / "custom.pth")
    rules = [["^trunk\\.(.*)", "\\1"], ["^aux_head\\.", None]]
    key_map = tmp_path / f"map.{suffix}"
    if suffix == "json":
        key_map.write_text(json.dumps(rules))
    else:
        key_map.write_text("- ['^trunk\\.(.*)', '\\1']\n- ['^aux_head\\.', null]\n")
    assert "0/84" in one_line_error(convert, tmp_path / "custom.pth", "resnet10t", tmp_path / "o.safetensors")
    out, report = convert(tmp_path / "custom.pth", "resnet10t", tmp_path / "o.safetensors", key_map=key_map)
    assert report["loaded"] == report["total"] and report["dropped"] == ["aux_head.weight"]
    assert any("--key-map" in n for n in report["notes"])
    ckpt = _assert_exact(out, cf.encoder_part(r10t), "timm", "resnet10t")
    assert ckpt.meta["provenance"]["key_map"]["sha256"] == file_sha256(key_map)


def test_bad_key_maps_are_one_line(tmp_path, r10t):
    torch.save(r10t, tmp_path / "plain.pth")
    cases = {"bad_regex.yaml": "- ['(unclosed', 'x']\n", "not_pairs.yaml": "- ['a', 'b', 'c']\n",
             "not_list.yaml": "a: b\n", "collide.yaml": "- ['^layer1\\..*', 'same']\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        message = one_line_error(read_foreign, tmp_path / "plain.pth", "resnet10t", key_map=tmp_path / name)
        assert "--key-map" in message or "renames both" in message, name


def test_harness_checkpoint_round_trip(tmp_path, r10t):
    encoder = create_encoder("resnet10t").state_dict()
    decoder = UNetDecoder(RESNET_CHANNELS, 1).state_dict()
    meta = {"arch": "resnet10t", "method": "depth_video", "data": {"dataset": "kitti_raw"}, "steps": 100,
            "seed": 3, "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3}, "decoder": {"kind": "monodepth2"}}
    src = save_checkpoint(tmp_path / "src.safetensors", encoder, meta, decoder_state=decoder)
    out, report = convert(src, "resnet10t", tmp_path / "out.safetensors", name="mine")
    assert report["format"] == "harness" and report["decoder"]["kind"] == "monodepth2"
    ckpt = load_checkpoint(out)
    assert ckpt.meta["method"] == "depth_video" and ckpt.meta["steps"] == 100 and ckpt.meta["name"] == "mine"
    assert ckpt.meta["provenance"]["format"] == "harness"
    assert all(torch.equal(ckpt.encoder[k], v) for k, v in encoder.items())
    assert all(torch.equal(ckpt.decoder[k], v) for k, v in decoder.items())
    assert "resnet18" in one_line_error(read_foreign, src, "resnet18")  # a harness checkpoint of another arch
    assert "harness checkpoint" in one_line_error(read_foreign, src, "resnet10t", fmt="timm")
