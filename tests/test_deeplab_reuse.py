"""Lao et al.'s Cityscapes setting (their Table 5): a depth network pre-trained with a DeepLabV3
head transfers with only the head's last layer fresh (`depth_supervised -o decoder=deeplabv3`,
then `--decoder deeplabv3` with `--init auto` or `encoder+decoder`)."""

import json

import pytest
import torch

from bench.cli import main
from bench.core.checkpoint import load_checkpoint
from bench.core.errors import UserError
from pretrain.api import build_method, resolve_config
from pretrain.warm_start import initialise
from transfer.model import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSIFIER = {"head.4.weight", "head.4.bias"}  # DeepLabHead's last 1x1 conv: the only fresh tensors


def _config(world, **kw):
    return {"name": "p", "method": "depth_supervised", "arch": "resnet10t", "root": str(world), "data_id": "tiny",
            "steps": 2, "batch_size": 2, "lr": 1e-3, "seed": 0, **kw}


@pytest.fixture(scope="module")
def deeplab_ckpt(tiny_world, tmp_path_factory):
    """A depth checkpoint pre-trained with the DeepLabV3 head, made from the command line."""
    out = tmp_path_factory.mktemp("deeplab") / "depth"
    assert main(["pretrain", "--method", "depth_supervised", "-o", "decoder=deeplabv3", "--arch", "resnet10t",
                 "--root", str(tiny_world), "--steps", "3", "--batch-size", "2", "--out", str(out),
                 "--no-progress"]) == 0
    return out / "checkpoint.safetensors"


def test_the_checkpoint_keeps_the_deeplab_head_with_its_metadata(deeplab_ckpt):
    ckpt = load_checkpoint(deeplab_ckpt)
    meta = ckpt.meta["decoder"]
    assert (meta["kind"], meta["out_channels"], meta["output_stride"], meta["atrous_rates"]) == \
        ("deeplabv3", 1, 16, [6, 12, 18])
    assert ckpt.meta["config"]["options"]["decoder"] == "deeplabv3"
    assert ckpt.decoder["head.4.weight"].shape == (1, 256, 1, 1)
    # The layout is the transfer decoder's, name for name (only the classifier's width differs).
    model, _ = build_model("resnet10t", None, "deeplabv3", "encoder", num_classes=7)
    ours = model.decoder.state_dict()
    assert set(ours) == set(ckpt.decoder)
    assert all(ours[k].shape == v.shape for k, v in ckpt.decoder.items() if k not in CLASSIFIER)


@pytest.mark.parametrize("init", ["auto", "encoder+decoder"])
def test_transfer_loads_every_decoder_tensor_but_the_classifier_bit_for_bit(deeplab_ckpt, init):
    ckpt = load_checkpoint(deeplab_ckpt)
    torch.manual_seed(0)
    model, info = build_model("resnet10t", ckpt, "deeplabv3", init, num_classes=7)
    state = model.decoder.state_dict()
    same = {k for k, v in state.items() if v.shape == ckpt.decoder[k].shape and torch.equal(v, ckpt.decoder[k])}
    assert set(state) - same == CLASSIFIER  # exactly the last layer is fresh
    assert info["effective"] == "encoder+decoder" and info["decoder_tensors_loaded"] == len(ckpt.decoder) - 2 == 42
    # The BatchNorm statistics came too (they moved away from their initial values in pre-training).
    assert not torch.equal(state["head.2.running_mean"], torch.zeros(256))
    assert state["head.4.weight"].shape == (7, 256, 1, 1)


def test_init_encoder_keeps_the_head_fresh(deeplab_ckpt):
    ckpt = load_checkpoint(deeplab_ckpt)
    model, info = build_model("resnet10t", ckpt, "deeplabv3", "encoder", num_classes=7)
    assert info["effective"] == "encoder" and info["decoder_tensors_loaded"] == 0
    assert not torch.equal(model.decoder.state_dict()["head.0.convs.0.0.weight"], ckpt.decoder["head.0.convs.0.0.weight"])


def test_decoder_kinds_that_differ_refuse_encoder_plus_decoder_in_one_line(deeplab_ckpt, tiny_depth_ckpt):
    u_net = load_checkpoint(tiny_depth_ckpt)  # a monodepth2 decoder
    with pytest.raises(UserError, match="needs deeplabv3 decoder weights, and this checkpoint has a monodepth2 "
                                        "decoder; use --init encoder") as exc:
        build_model("resnet10t", u_net, "deeplabv3", "encoder+decoder", num_classes=7)
    assert "\n" not in str(exc.value)
    assert build_model("resnet10t", u_net, "deeplabv3", "auto", num_classes=7)[1]["effective"] == "encoder"
    deeplab = load_checkpoint(deeplab_ckpt)
    with pytest.raises(UserError, match="needs monodepth2 decoder weights, and this checkpoint has a deeplabv3"):
        build_model("resnet10t", deeplab, "monodepth2", "encoder+decoder", num_classes=7)
    assert build_model("resnet10t", deeplab, "monodepth2", "auto", num_classes=7)[1]["effective"] == "encoder"


def test_pretraining_dilates_the_encoder_as_the_transfer_decoder_does(tiny_world):
    for stride in (16, 8):
        task = build_method(_config(tiny_world, options={"decoder": "deeplabv3", "output_stride": stride}))
        assert task.encoder.strides[-1] == stride and task.modules["encoder"] is task.encoder
        rates = [m[0].dilation[0] for m in task.decoder.head[0].convs[1:4]]  # ASPPConv: conv, BN, ReLU
        assert rates == ([6, 12, 18] if stride == 16 else [12, 24, 36])
        head = task.decoder.head_conv()
        assert 0.4 < float(head.weight.detach().std()) < 0.6 and torch.count_nonzero(head.bias) == 0  # the NaN-safe init
        depth = task.predict(torch.zeros(2, 3, 48, 144, dtype=torch.uint8))
        assert depth.shape == (2, 48, 144) and bool(((depth > 0) & (depth < task.max_depth)).all())


def test_the_default_decoder_keeps_old_fingerprints_and_deeplab_spells_its_stride(tiny_world):
    plain = resolve_config(_config(tiny_world))["options"]
    assert plain == {"head_init_std": 0.5, "silog_lambda": 0.85, "silog_eps": 1e-24, "silog_unbiased": False,
                     "silog_sqrt": False, "max_depth": None, "sparse_fraction": None}  # as before the option
    assert resolve_config(_config(tiny_world, options={"decoder": "unet"}))["options"] == plain
    deeplab = resolve_config(_config(tiny_world, options={"decoder": "deeplabv3"}))["options"]
    assert deeplab == {**plain, "decoder": "deeplabv3", "output_stride": 16} == \
        resolve_config(_config(tiny_world, options={"decoder": "deeplabv3", "output_stride": 16}))["options"]
    with pytest.raises(UserError, match="option output_stride: .*applies to decoder=deeplabv3 only") as exc:
        resolve_config(_config(tiny_world, options={"output_stride": 8}))
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="at least 2"):
        build_method(_config(tiny_world, batch_size=1, options={"decoder": "deeplabv3"}))


def test_warm_start_from_a_deeplab_checkpoint_reloads_its_head(tiny_world, deeplab_ckpt):
    task = build_method(_config(tiny_world, options={"decoder": "deeplabv3"}))
    report = initialise(task, deeplab_ckpt)
    assert report["decoder_loaded"] == 42


def test_cli_transfer_with_the_pretrained_deeplab_head(tiny_world, deeplab_ckpt, tmp_path, capsys):
    out = tmp_path / "cell"
    code = main(["transfer", "--checkpoint", str(deeplab_ckpt), "--root", str(tiny_world), "--protocol", "full",
                 "--decoder", "deeplabv3", "--init", "encoder+decoder", "--train-size", "2", "--steps", "2",
                 "--batch-size", "2", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok" and record["init"]["effective"] == "encoder+decoder"
    assert record["init"]["decoder_tensors_loaded"] == 42


def test_a_manifest_pretrains_with_the_deeplab_head_and_reuses_it(tmp_path):
    from bench.study.runner import run_manifest

    manifest = tmp_path / "deeplab.yaml"
    manifest.write_text(f"""
name: deeplab
out: {tmp_path / 'results'}
data:
  synth: {{sequences: 3, frames: 4, height: 48, width: 144, seed: 0, crops_per_class: 6}}
backbones:
  - name: depth
    arch: resnet10t
    pretrain: {{method: depth_supervised, steps: 2, batch_size: 2, options: {{decoder: deeplabv3}}}}
datasets: [{{name: synth}}]
transfer:
  protocols: [frozen]
  decoders: [deeplabv3]
  train_sizes: [2]
  steps: 2
  batch_size: 2
  eval_every: 2
""")
    assert run_manifest(manifest, progress=False, plots=False) == 0
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("*/record.json")]
    assert record["status"] == "ok" and record["init"]["effective"] == "encoder+decoder"
    assert record["init"]["decoder_tensors_loaded"] == 42
