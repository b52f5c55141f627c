"""An imported encoder sees the input its source project feeds it, and computes what the source
project's forward pass computes.

For every checkpoint format, the converted harness encoder's features on an image (uint8 ->
[0, 1] -> the normalisation the checkpoint records -> the encoder, as a transfer cell runs it)
are compared, within 1e-5, with a transcription of the source project's own forward pass on the
same image, written from its code:

- monodepth2 `networks/resnet_encoder.py` (`ResnetEncoder.forward`): `(x - 0.45) / 0.225`
  inside the encoder, then conv1-bn1-relu and layer1..4 of a torchvision ResNet; DepthToSemantic
  and NimbleD reuse that encoder;
- torchvision and MoCo v2 (a torchvision ResNet, ImageNet `Normalize` in the data pipeline);
- timm (its classifier model's `forward_intermediates`, ImageNet statistics);
- DINO, DINOv2 and MAE ViTs, and Depth Anything's DINOv2 encoder: patch embedding, class token,
  positional embedding, pre-norm blocks (with DINOv2's LayerScale), the final norm applied to
  the tapped blocks (`get_intermediate_layers(..., norm=True)`); compared on the token grids,
  before the harness resamples them to strides 4..32, at the checkpoint's native grid size.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

import fixtures.checkpoint_formats as cf
from bench.core.checkpoint import load_checkpoint, load_encoder_weights
from bench.core.models.backbones import IMAGENET_MEAN, IMAGENET_STD, create_encoder, normalize
from bench.importers import convert

pytestmark = pytest.mark.usefixtures("one_thread")

RESNET18_CHANNELS = [64, 64, 128, 256, 512]
TOL = 1e-5


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, 3, h, w), generator=gen, dtype=torch.uint8)


def _harness_encoder(path, arch, tmp_path, **kw):
    out, report = convert(path, arch, tmp_path / "converted.safetensors", **kw)
    ckpt = load_checkpoint(out)
    encoder = create_encoder(arch)
    load_encoder_weights(encoder, ckpt.encoder, source=str(out))
    encoder.normalization = ckpt.meta["normalization"]  # as transfer.model.build_model does
    return encoder.eval(), ckpt, report


def _harness_features(encoder, image_uint8) -> list[torch.Tensor]:
    with torch.no_grad():  # exactly SegmentationModel.encode
        return encoder(normalize(image_uint8.float() / 255.0, encoder.normalization))


def _close(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> float:
    assert len(ours) == len(theirs)
    worst = 0.0
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        worst = max(worst, float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)))
    return worst


# --- transcriptions of the source projects' forward passes ------------------------------------

def _torchvision_resnet18(plain: dict) -> torch.nn.Module:
    net = torchvision.models.resnet18()
    net.load_state_dict(plain)
    return net.eval()


@torch.no_grad()
def monodepth2_resnet_encoder(plain: dict, image_uint8: torch.Tensor) -> list[torch.Tensor]:
    """monodepth2 ResnetEncoder.forward: the normalisation is inside the network."""
    encoder = _torchvision_resnet18(plain)
    x = (image_uint8.float() / 255.0 - 0.45) / 0.225
    x = encoder.conv1(x)
    x = encoder.bn1(x)
    features = [encoder.relu(x)]
    features.append(encoder.layer1(encoder.maxpool(features[-1])))
    features.append(encoder.layer2(features[-1]))
    features.append(encoder.layer3(features[-1]))
    features.append(encoder.layer4(features[-1]))
    return features


def _imagenet(image_uint8: torch.Tensor) -> torch.Tensor:
    return torchvision.transforms.functional.normalize(image_uint8.float() / 255.0, IMAGENET_MEAN, IMAGENET_STD)


@torch.no_grad()
def torchvision_resnet_features(plain: dict, image_uint8: torch.Tensor) -> list[torch.Tensor]:
    nodes = ["relu", "layer1", "layer2", "layer3", "layer4"]
    extractor = create_feature_extractor(_torchvision_resnet18(plain), nodes)
    out = extractor(_imagenet(image_uint8))
    return [out[n] for n in nodes]


@torch.no_grad()
def timm_resnet_features(plain: dict, image_uint8: torch.Tensor) -> list[torch.Tensor]:
    import timm

    model = timm.create_model("resnet18", pretrained=False).eval()
    model.load_state_dict(plain)
    return model.forward_intermediates(_imagenet(image_uint8), intermediates_only=True)


@torch.no_grad()
def vit_intermediates(state: dict, image_uint8: torch.Tensor, blocks, heads: int, patch: int) -> list[torch.Tensor]:
    """DINO / DINOv2 / MAE ViT forward from the raw tensors: prepare_tokens (conv patch embedding,
    class token, positional embedding at the native grid), pre-norm blocks with LayerScale where
    the checkpoint has it, the final LayerNorm on each tapped block, class token dropped."""
    x = _imagenet(image_uint8)
    tokens = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch)
    n, dim, gh, gw = tokens.shape
    tokens = tokens.flatten(2).transpose(1, 2)
    assert state["pos_embed"].shape[1] == 1 + gh * gw, "compare at the checkpoint's native grid"
    x = torch.cat([state["cls_token"].expand(n, -1, -1), tokens], dim=1) + state["pos_embed"]

    def norm(t, prefix):
        return F.layer_norm(t, (dim,), state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps=1e-6)

    outputs = []
    for i in range(max(blocks) + 1):
        p = f"blocks.{i}"
        ls1 = state.get(f"{p}.ls1.gamma", torch.ones(dim))
        ls2 = state.get(f"{p}.ls2.gamma", torch.ones(dim))
        h = norm(x, f"{p}.norm1")
        qkv = F.linear(h, state[f"{p}.attn.qkv.weight"], state[f"{p}.attn.qkv.bias"])
        q, k, v = qkv.reshape(n, -1, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5
        h = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, -1, dim)
        x = x + ls1 * F.linear(h, state[f"{p}.attn.proj.weight"], state[f"{p}.attn.proj.bias"])
        h = F.linear(norm(x, f"{p}.norm2"), state[f"{p}.mlp.fc1.weight"], state[f"{p}.mlp.fc1.bias"])
        h = F.linear(F.gelu(h), state[f"{p}.mlp.fc2.weight"], state[f"{p}.mlp.fc2.bias"])
        x = x + ls2 * h
        if i in blocks:
            out = norm(x, "norm")[:, 1:]
            outputs.append(out.transpose(1, 2).reshape(n, dim, gh, gw))
    return outputs


# --- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet18_plain():
    return cf.torchvision_resnet18_state(seed=3)


def _distinct(state: dict, seed: int) -> dict:
    """Random LayerScale gammas and biases, so that every tensor matters in the comparison."""
    gen = torch.Generator().manual_seed(seed)
    out = dict(state)
    for k, v in state.items():
        if k.endswith(("ls1.gamma", "ls2.gamma")) or (k.endswith(".bias") and v.dim() == 1):
            out[k] = 0.1 + torch.rand(v.shape, generator=gen)
    return out


@pytest.fixture(scope="module")
def vit_tiny():
    torch.manual_seed(5)
    return _distinct(create_encoder("vit_tiny_patch16_224").state_dict(), 5)


@pytest.fixture(scope="module")
def vit_dinov2():
    torch.manual_seed(6)
    return _distinct(create_encoder("vit_small_patch14_dinov2").state_dict(), 6)


# --- the comparisons --------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["monodepth2", "depthtosemantic", "nimbled"])
def test_monodepth2_family_encoders_match_monodepth2s_forward(fmt, resnet18_plain, tmp_path):
    body = cf.encoder_part(resnet18_plain)
    if fmt == "monodepth2":
        path = tmp_path / "mono_640x192"
        cf.write_monodepth2_folder(path, body, RESNET18_CHANNELS)
    elif fmt == "nimbled":
        path = tmp_path / "weights_19"
        cf.write_nimbled_folder(path, body, RESNET18_CHANNELS)
    else:
        path = cf.write_depthtosemantic(tmp_path / "d2s", body, RESNET18_CHANNELS)[0]
    encoder, ckpt, report = _harness_encoder(path, "resnet18", tmp_path)
    assert ckpt.meta["normalization"] == {"mean": [0.45] * 3, "std": [0.225] * 3}
    assert report["normalization"]["source"] == "format (monodepth2)"
    image = _image(96, 160)
    assert _close(_harness_features(encoder, image), monodepth2_resnet_encoder(resnet18_plain, image)) < TOL


def test_imagenet_statistics_would_be_wrong_for_monodepth2(resnet18_plain, tmp_path):
    # The bias this guards against: the same weights fed ImageNet-normalised input are off by
    # several percent per level (what every converted monodepth2 encoder saw before).
    path = tmp_path / "mono_640x192"
    cf.write_monodepth2_folder(path, cf.encoder_part(resnet18_plain), RESNET18_CHANNELS)
    encoder, _, _ = _harness_encoder(path, "resnet18", tmp_path, normalization="imagenet")
    image = _image(96, 160)
    assert _close(_harness_features(encoder, image), monodepth2_resnet_encoder(resnet18_plain, image)) > 0.02


@pytest.mark.parametrize("fmt", ["torchvision", "moco"])
def test_torchvision_resnets_match_torchvisions_forward(fmt, resnet18_plain, tmp_path):
    if fmt == "torchvision":
        path = tmp_path / "resnet18-f37072fd.pth"
        torch.save(resnet18_plain, path)
    else:
        path = cf.write_moco_v2(tmp_path / "moco_v2_800ep_pretrain.pth.tar", resnet18_plain)
    encoder, ckpt, _ = _harness_encoder(path, "resnet18", tmp_path)
    assert ckpt.meta["normalization"] == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    image = _image(96, 160)
    assert _close(_harness_features(encoder, image), torchvision_resnet_features(resnet18_plain, image)) < TOL


def test_timm_resnets_match_timms_forward(tmp_path):
    from safetensors.torch import save_file

    plain = cf.timm_state("resnet18", seed=4)
    save_file(plain, str(tmp_path / "model.safetensors"))
    encoder, _, _ = _harness_encoder(tmp_path / "model.safetensors", "resnet18", tmp_path, fmt="timm")
    image = _image(96, 160)
    assert _close(_harness_features(encoder, image), timm_resnet_features(plain, image)) < TOL


def _vit_grids(encoder, image_uint8) -> list[torch.Tensor]:
    """The harness ViT's tapped, normalised token grids, before resampling to strides 4..32."""
    x = normalize(image_uint8.float() / 255.0, encoder.normalization)
    with torch.no_grad():
        return encoder.forward_intermediates(x, indices=list(encoder.blocks_tapped), norm=True, output_fmt="NCHW",
                                             intermediates_only=True)


@pytest.mark.parametrize("fmt", ["dino", "mae"])
def test_dino_and_mae_vits_match_their_forward(fmt, vit_tiny, tmp_path):
    writer = cf.write_dino if fmt == "dino" else cf.write_mae
    path = writer(tmp_path / f"{fmt}.pth", vit_tiny)
    encoder, ckpt, _ = _harness_encoder(path, "vit_tiny_patch16_224", tmp_path, fmt=fmt)
    assert ckpt.meta["normalization"] == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    image = _image(224, 224)
    theirs = vit_intermediates(vit_tiny, image, encoder.blocks_tapped, heads=3, patch=16)
    assert _close(_vit_grids(encoder, image), theirs) < TOL


@pytest.mark.parametrize("fmt", ["dino", "depth_anything"])
def test_dinov2_and_depth_anything_encoders_match_dinov2s_forward(fmt, vit_dinov2, tmp_path):
    path = (cf.write_dinov2_hub(tmp_path / "dinov2_vits14.pth", vit_dinov2) if fmt == "dino"
            else cf.write_depth_anything(tmp_path / "depth_anything_v2_vits.pth", vit_dinov2))
    encoder, _, _ = _harness_encoder(path, "vit_small_patch14_dinov2", tmp_path, fmt=fmt)
    assert encoder.blocks_tapped == (2, 5, 8, 11)  # Depth Anything's intermediate_layer_idx for ViT-S
    side = 14 * int(math.isqrt(vit_dinov2["pos_embed"].shape[1] - 1))  # 518: the native grid
    image = _image(side, side)
    theirs = vit_intermediates(vit_dinov2, image, encoder.blocks_tapped, heads=6, patch=14)
    assert _close(_vit_grids(encoder, image), theirs) < TOL


def test_the_normalization_can_be_overridden_and_is_recorded(resnet18_plain, tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_plain, path)
    _, ckpt, report = _harness_encoder(path, "resnet18", tmp_path, normalization="0.5/0.25")
    assert ckpt.meta["normalization"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert report["normalization"]["source"] == "override" and ckpt.meta["provenance"]["normalization"] == "override"
    from bench.core.errors import UserError

    with pytest.raises(UserError, match="--normalization: give one of imagenet"):
        convert(path, "resnet18", tmp_path / "x.safetensors", normalization="sepia")
    with pytest.raises(UserError, match="std needs one or three positive values"):
        convert(path, "resnet18", tmp_path / "x.safetensors", normalization="0.5/0")
    assert not (tmp_path / "x.safetensors").exists()


def test_a_manifest_import_records_its_normalization_and_a_change_converts_again(resnet18_plain, tmp_path):
    from bench.importers.cache import import_backbone
    from bench.study.manifest import ImportSpec

    path = tmp_path / "mono_640x192"
    cf.write_monodepth2_folder(path, cf.encoder_part(resnet18_plain), RESNET18_CHANNELS)
    default = import_backbone("m", "resnet18", ImportSpec(file=path), tmp_path / "results", log=lambda _: None)
    assert load_checkpoint(default).meta["normalization"] == {"mean": [0.45] * 3, "std": [0.225] * 3}
    stamp = default.stat().st_mtime_ns
    assert import_backbone("m", "resnet18", ImportSpec(file=path), tmp_path / "results", log=print) == default
    assert default.stat().st_mtime_ns == stamp  # current: not converted again
    spec = ImportSpec(file=path, normalization={"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    again = import_backbone("m", "resnet18", spec, tmp_path / "results", log=lambda _: None)
    assert load_checkpoint(again).meta["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="give one of imagenet"):
        ImportSpec(file=path, normalization="sepia")


def test_convert_takes_normalization_on_the_command_line(resnet18_plain, tmp_path, capsys):
    from bench.cli import main

    torch.save(resnet18_plain, tmp_path / "r18.pth")
    out = tmp_path / "r18.safetensors"
    assert main(["convert", str(tmp_path / "r18.pth"), "--arch", "resnet18", "--out", str(out),
                 "--normalization", "half"]) == 0
    assert load_checkpoint(out).meta["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert main(["convert", str(tmp_path / "r18.pth"), "--arch", "resnet18", "--out", str(tmp_path / "bad.safetensors"),
                 "--normalization", "1,2/3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --normalization: mean needs one or three") and "\n" not in err
    assert not (tmp_path / "bad.safetensors").exists()
