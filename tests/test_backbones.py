import pytest
import torch

from bench.errors import UserError
from bench.models.backbones import create_encoder, list_backbones
from bench.models.unet_decoder import UNetDecoder


@pytest.mark.parametrize("arch", list_backbones())
def test_every_registered_backbone(arch):
    enc = create_encoder(arch).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        feats = enc(x)
    assert [f.shape[1] for f in feats] == enc.channels
    assert [64 // f.shape[2] for f in feats] == enc.strides
    assert set(enc.normalization) == {"mean", "std"} and len(enc.normalization["mean"]) == 3
    # Every backbone must also drive the U-Net decoder at full resolution.
    out = UNetDecoder(enc.channels, out_channels=5, scales=(0, 1))(feats, size=x.shape[-2:])
    assert out[0].shape == (1, 5, 64, 96) and out[1].shape == (1, 5, 32, 48)


def test_unknown_arch_is_a_user_error():
    with pytest.raises(UserError, match="unknown arch 'resnet9000'"):
        create_encoder("resnet9000")
