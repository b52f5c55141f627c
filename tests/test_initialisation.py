"""The random baseline starts as torchvision's ResNet does (Kaiming fan_out convolutions,
BatchNorm gamma = 1, no zero-initialised residual branch), and the scheme is a recorded choice."""

import math

import pytest
import torch
import torchvision
from torch import nn

from bench.core.models.backbones import create_encoder
from bench.core.models.initialisation import effective_random_init, torchvision_init_
from tests.conftest import cell_config
from transfer.api import Cell, run_cell

pytestmark = pytest.mark.usefixtures("one_thread")


def _last_bns(encoder: nn.Module) -> list[nn.BatchNorm2d]:
    """The BatchNorm closing each residual branch: bn2 of a BasicBlock, bn3 of a Bottleneck."""
    out = []
    for m in encoder.modules():
        if hasattr(m, "conv1") and hasattr(m, "bn2") and hasattr(m, "downsample"):  # a residual block
            out.append(m.bn3 if hasattr(m, "bn3") else m.bn2)
    return out


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnet10t"])
def test_torchvision_scheme_statistics(arch):
    torch.manual_seed(0)
    encoder = create_encoder(arch, init="torchvision")
    assert encoder.init_scheme == "torchvision"
    for name, m in encoder.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0), name
        elif isinstance(m, nn.Conv2d) and m.weight.numel() >= 20_000:  # enough weights for a std estimate
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            std = float(m.weight.detach().std())
            assert std == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.05), name  # Kaiming, ReLU gain
            assert abs(float(m.weight.detach().mean())) < 0.05 * std, name
    assert _last_bns(encoder)  # the check above covered the residual branches


def test_timm_scheme_zeroes_every_residual_branch_and_torchvision_does_not():
    timm_encoder = create_encoder("resnet18")  # what pre-training starts from
    assert timm_encoder.init_scheme == "timm"
    assert all(torch.all(bn.weight == 0) for bn in _last_bns(timm_encoder))
    x = torch.rand(1, 3, 64, 64)
    block = timm_encoder.layer1[0].eval()
    stem = timm_encoder.maxpool(timm_encoder.act1(timm_encoder.bn1(timm_encoder.conv1(x))))
    # A zero-gamma branch adds nothing: the block is its shortcut (+ ReLU) -- the crippled baseline.
    assert torch.equal(block(stem), torch.relu(stem))
    tv_encoder = create_encoder("resnet18", init="torchvision").eval()
    tv_stem = tv_encoder.maxpool(tv_encoder.act1(tv_encoder.bn1(tv_encoder.conv1(x))))
    assert not torch.allclose(tv_encoder.layer1[0](tv_stem), torch.relu(tv_stem))


def test_torchvision_init_matches_torchvision_resnet18_layer_by_layer():
    torch.manual_seed(0)
    ours = create_encoder("resnet18", init="torchvision")
    reference = torchvision.models.resnet18()  # its constructor's initialisation, untouched
    theirs = dict(reference.named_modules())
    compared = 0
    for name, m in ours.named_modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) and name in theirs:
            ref = theirs[name]
            assert m.weight.shape == ref.weight.shape, name
            if isinstance(m, nn.BatchNorm2d):
                assert torch.equal(m.weight, ref.weight) and torch.equal(m.bias, ref.bias), name
            elif m.weight.numel() >= 20_000:
                assert float(m.weight.detach().std()) == pytest.approx(float(ref.weight.detach().std()), rel=0.08), name
            compared += 1
    assert compared == 40  # 20 convolutions and 20 BatchNorms, downsamples included


def test_the_scheme_applies_to_convolutional_encoders_only():
    assert effective_random_init("cnn", "torchvision") == "torchvision"
    assert effective_random_init("vit", "torchvision") == "timm"
    assert effective_random_init("entry", "timm") == "entry"
    assert create_encoder("vit_tiny_patch16_224", init="torchvision").init_scheme == "timm"
    with pytest.raises(ValueError, match="unknown random init"):
        effective_random_init("cnn", "xavier")
    conv = torchvision_init_(nn.Sequential(nn.Conv2d(3, 4, 3, bias=True)))[0]
    assert torch.all(conv.bias == 0)


@pytest.mark.parametrize("scheme", ["torchvision", "timm"])
def test_a_random_cell_records_its_scheme_and_uses_it(tiny_world, tmp_path, scheme):
    cell = Cell("random", "none", "resnet10t", "synth", "linear", "linear", 2, 0)
    from transfer.api import TransferSettings, resolve_cell_config

    config = resolve_cell_config(cell, TransferSettings(steps=1, batch_size=2, eval_every=1), dataset={"name": "synth"},
                                 dataset_root=tiny_world, data_id="tiny", random_init=scheme)
    record = run_cell(config, tmp_path, progress=False)
    assert record["config"]["random_init"] == scheme and record["init"]["random_init"] == scheme
    assert record["encoder_sha256_before"] == record["encoder_sha256_after"]
    other = run_cell(cell_config(tiny_world, cell, steps=1, batch_size=2, eval_every=1), tmp_path / "default",
                     progress=False)
    assert other["init"]["random_init"] == "torchvision"  # the default
    assert (other["encoder_sha256_before"] == record["encoder_sha256_before"]) == (scheme == "torchvision")
