import math

import pytest
import torch
import torch.nn.functional as F

from bench.core.checkpoint import load_encoder_weights
from bench.core.errors import UserError
from bench.core.models.backbones import backbone_spec, create_encoder, list_backbones
from bench.core.models.unet_decoder import UNetDecoder
from bench.core.models.vit import default_blocks, resample_tokens

TINY_VIT = "vit_tiny_patch16_224"
# Not a multiple of 14, 16 or 32 in either direction: padding and ceil rounding are exercised.
H, W = 44, 100


@pytest.fixture(scope="module")
def tiny_vit():
    """One tiny ViT encoder (eval mode) for the tests that only read it."""
    return create_encoder(TINY_VIT).eval()


def _plain_timm_state(arch: str) -> dict[str, torch.Tensor]:
    """A state dict of the plain timm model of `arch` (as foreign weights come), random values.

    Built on the meta device: names and shapes without the cost of initialising the big ViTs."""
    import timm

    spec = backbone_spec(arch)
    extra = {"dynamic_img_size": True} if spec.family == "vit" else {}
    with torch.device("meta"):
        ref = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, **extra, **spec.timm_kwargs)
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else torch.zeros(v.shape, dtype=v.dtype)
            for k, v in ref.state_dict().items()}


@pytest.mark.parametrize("arch", list_backbones())
def test_every_registered_backbone(arch):
    """Levels, channels and strides as declared; level size = ceil(input / stride); plain timm keys."""
    enc = create_encoder(arch).eval()
    assert enc.arch == arch and len(enc.channels) == len(enc.strides)
    expected_levels = 4 if backbone_spec(arch).family == "vit" else 5
    assert len(enc.strides) == expected_levels and enc.strides[-1] == 32
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        feats = enc(x)
    assert len(feats) == expected_levels
    for f, c, s in zip(feats, enc.channels, enc.strides):
        assert f.shape == (2, c, math.ceil(H / s), math.ceil(W / s)), (s, f.shape)
        assert torch.isfinite(f).all()
    assert set(enc.normalization) == {"mean", "std"} and len(enc.normalization["mean"]) == 3
    # Every backbone must also drive the U-Net decoder at full resolution.
    with torch.no_grad():
        out = UNetDecoder(enc.channels, out_channels=5, scales=(0, 1))(feats, size=x.shape[-2:])
    assert out[0].shape == (2, 5, H, W) and out[1].shape == (2, 5, math.ceil(H / 2), math.ceil(W / 2))

    # Foreign weights: the plain timm model's keys, no prefix, and they load with full coverage.
    plain = _plain_timm_state(arch)
    own = enc.state_dict()
    assert list(own) == list(plain)
    assert all(own[k].shape == v.shape for k, v in plain.items())
    report = load_encoder_weights(enc, plain)
    assert report["loaded"] == report["total"] == len(plain) and not report["unexpected"]
    assert all(torch.equal(v, plain[k]) for k, v in enc.state_dict().items())


def test_unknown_arch_is_a_user_error():
    with pytest.raises(UserError, match="unknown arch 'resnet9000'"):
        create_encoder("resnet9000")


# ---------------------------------------------------------------------------------------- ViTs

def test_vit_blocks_follow_depth_anything(tiny_vit):
    assert default_blocks(12) == (2, 5, 8, 11)
    assert default_blocks(24) == (4, 11, 17, 23)
    assert default_blocks(40) == (9, 19, 29, 39)
    assert default_blocks(16) == (3, 7, 11, 15)
    assert tiny_vit.blocks_tapped == (2, 5, 8, 11)


def test_vit_levels_are_the_normed_intermediate_tokens(tiny_vit):
    """Stride 16 of a /16 ViT is the final-norm'd block output itself, stride 32 its 2x2 mean,
    also where the input was padded (timm on an explicitly zero-padded image gives the same)."""
    import timm

    enc = tiny_vit
    plain = timm.create_model(TINY_VIT, pretrained=False, num_classes=0, dynamic_img_size=True).eval()
    plain.load_state_dict(enc.state_dict())
    x = torch.randn(1, 3, 40, 72)  # pads to 48 x 80: a 3 x 5 token grid
    with torch.no_grad():
        feats = enc(x)
        ref = plain.forward_intermediates(F.pad(x, (0, 8, 0, 8)), indices=[2, 5, 8, 11], norm=True,
                                          output_fmt="NCHW", intermediates_only=True)
    assert ref[2].shape[-2:] == (3, 5)
    torch.testing.assert_close(feats[2], ref[2], rtol=0, atol=1e-5)
    x2 = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        deep = enc(x2)[3]
        ref = plain.forward_intermediates(x2, indices=[11], norm=True, output_fmt="NCHW", intermediates_only=True)
    torch.testing.assert_close(deep, F.avg_pool2d(ref[0], 2), rtol=0, atol=1e-5)


def test_vit_resampling_places_samples_at_cell_centres():
    """A token grid holding each token's centre x (pixels) resamples to each cell's centre x:
    no shift from padding or from a patch size (14) that does not divide the stride."""
    patch, width = 14, 100  # 8 tokens (112 px, padded) for a 100 px image
    centres = (torch.arange(8.0) + 0.5) * patch
    grid = centres.view(1, 1, 1, 8).expand(1, 1, 3, 8)
    for stride in (4, 8, 16, 32):
        out = resample_tokens(grid, (patch, patch), stride, (40, width))
        n = math.ceil(width / stride)
        assert out.shape == (1, 1, math.ceil(40 / stride), n)
        want = ((torch.arange(n) + 0.5) * stride).clamp(centres[0], centres[-1])  # clamped beyond the edges
        torch.testing.assert_close(out[0, 0, 0], want)


def test_vit_output_stride_caps_the_deepest_levels(tiny_vit):
    base = tiny_vit
    assert base.strides == [4, 8, 16, 32]
    for os_, strides in ((16, [4, 8, 16, 16]), (8, [4, 8, 8, 8])):
        enc = create_encoder(TINY_VIT, output_stride=os_).eval()
        assert enc.strides == strides
        assert {k: v.shape for k, v in enc.state_dict().items()} == {k: v.shape for k, v in base.state_dict().items()}
        with torch.no_grad():
            feats = enc(torch.randn(1, 3, H, W))
        assert [f.shape[-2:] for f in feats] == [(math.ceil(H / s), math.ceil(W / s)) for s in strides]
    with pytest.raises(UserError, match="output_stride must be one of"):
        create_encoder(TINY_VIT, output_stride=4)


def test_vit_cka_presets_see_plain_block_names(tiny_vit):
    from bench.core.cka import layer_hooks, layer_presets

    enc = tiny_vit
    names = layer_presets(enc, "blocks")
    assert names == [f"blocks.{i}" for i in range(12)]
    with layer_hooks(enc, names[:2]) as out, torch.no_grad():
        enc(torch.randn(2, 3, 32, 48))
    assert [t.shape for t in out.values()] == [(2, 1 + 2 * 3, 192)] * 2


# ------------------------------------------------------------------------------------- U-Net

# The 5-level U-Net's tensors, recorded before the decoder was generalised: existing depth
# checkpoints (and `--init encoder+decoder`) depend on these names and shapes.
RESNET18_UNET_TENSORS = [
    ("upconvs.0.1.weight", (256, 512, 3, 3)), ("upconvs.0.1.bias", (256,)),
    ("upconvs.1.1.weight", (128, 256, 3, 3)), ("upconvs.1.1.bias", (128,)),
    ("upconvs.2.1.weight", (64, 128, 3, 3)), ("upconvs.2.1.bias", (64,)),
    ("upconvs.3.1.weight", (32, 64, 3, 3)), ("upconvs.3.1.bias", (32,)),
    ("upconvs.4.1.weight", (16, 32, 3, 3)), ("upconvs.4.1.bias", (16,)),
    ("fuse.0.1.weight", (256, 512, 3, 3)), ("fuse.0.1.bias", (256,)),
    ("fuse.1.1.weight", (128, 256, 3, 3)), ("fuse.1.1.bias", (128,)),
    ("fuse.2.1.weight", (64, 128, 3, 3)), ("fuse.2.1.bias", (64,)),
    ("fuse.3.1.weight", (32, 96, 3, 3)), ("fuse.3.1.bias", (32,)),
    ("fuse.4.1.weight", (16, 16, 3, 3)), ("fuse.4.1.bias", (16,)),
    ("heads.0.1.weight", (7, 16, 3, 3)), ("heads.0.1.bias", (7,)),
]


def test_five_level_unet_keeps_its_tensors():
    dec = UNetDecoder([64, 64, 128, 256, 512], 7)
    assert [(k, tuple(v.shape)) for k, v in dec.state_dict().items()] == RESNET18_UNET_TENSORS


def test_unet_on_a_four_level_vit_is_full_resolution(tiny_vit):
    enc = tiny_vit
    dec = UNetDecoder(enc.channels, out_channels=3, scales=(0, 1, 2, 3))
    # Skips at the stride-16, 8 and 4 stages; the stride-2 and full-resolution stages have none.
    shapes = {k: tuple(v.shape) for k, v in dec.state_dict().items()}
    assert shapes["upconvs.0.1.weight"] == (256, 192, 3, 3)
    assert [shapes[f"fuse.{i}.1.weight"][1] for i in range(5)] == [256 + 192, 128 + 192, 64 + 192, 32, 16]
    with torch.no_grad():
        out = dec(enc(torch.randn(1, 3, H, W)), size=(H, W))
    assert {s: o.shape[-2:] for s, o in out.items()} == {
        s: (math.ceil(H / 2**s), math.ceil(W / 2**s)) for s in (0, 1, 2, 3)}
    with pytest.raises(ValueError, match="1 to 5 encoder levels"):
        UNetDecoder([8] * 6, 3)


# -------------------------------------------------------------------------------- transfer

M2F_TINY = {"hidden_dim": 32, "num_queries": 4, "decoder_layers": 2, "pixel_decoder_layers": 1, "train_points": 256}


@pytest.mark.parametrize("decoder, options", [("monodepth2", None), ("linear", None), ("deeplabv3", None),
                                              ("mask2former", M2F_TINY)])
def test_vit_drives_every_decoder(decoder, options):
    from transfer.model import build_model

    model, info = build_model(TINY_VIT, None, decoder, "encoder", 7, options)
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 48, 144, dtype=torch.uint8))
    assert out.shape == (1, 7, 48, 144) and torch.isfinite(out).all()
