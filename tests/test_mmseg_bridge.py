"""The MMSegmentation bridge (`--decoder mmseg:CONFIG.py`, transfer/decoders/mmseg.py).

Needs the optional extra (`pip install -e ".[mmseg]"`): the tests that build heads are skipped
without it, unless `BENCH_REQUIRE_MMSEG=1` (CI), which turns a missing extra into a failure. The
missing-extra message and the content ids need no MMSeg and always run.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.core.errors import UserError
from tests.margins import assert_below
from transfer.decoders import mmseg as bridge
from transfer.model import build_model

ASPP = Path(__file__).resolve().parents[1] / "configs" / "mmseg" / "deeplabv3_aspp.py"
REQUIRED = os.environ.get("BENCH_REQUIRE_MMSEG") == "1"


def _importable() -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module("mmseg")
    except Exception as exc:  # ImportError, or mmseg's version assertions
        return f"{type(exc).__name__}: {exc}"
    return None


WHY_NOT = _importable()
needs_mmseg = pytest.mark.skipif(WHY_NOT is not None and not REQUIRED,
                                 reason=f"MMSegmentation extra not installed ({WHY_NOT})")


def _build(spec, num_classes=7, **options):
    return build_model("resnet10t", None, f"mmseg:{spec}", "encoder", num_classes, options or None)[0]


def _variant(tmp_path, name, old, new):
    text = ASPP.read_text()
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new))
    return path


def _one_line_error(fn, *needles):
    with pytest.raises(UserError) as err:
        fn()
    message = str(err.value)
    assert "\n" not in message and all(n in message for n in needles), message
    return message


def test_required_extra_is_importable():
    if REQUIRED:
        assert WHY_NOT is None, f"BENCH_REQUIRE_MMSEG=1 but mmseg does not import: {WHY_NOT}"


def test_missing_extra_is_one_line(monkeypatch):
    for name in ("mmseg", "mmengine", "mmcv"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    bridge._mmseg.cache_clear()
    bridge._load_config.cache_clear()
    try:
        _one_line_error(lambda: _build(ASPP), "optional MMSegmentation extra", 'pip install -e ".[mmseg]"')
    finally:
        bridge._mmseg.cache_clear()
        bridge._load_config.cache_clear()


def test_content_ids_follow_the_config_and_its_bases(tmp_path):
    base = tmp_path / "base.py"
    base.write_text("norm_cfg = dict(type='BN')\n")
    cfg = tmp_path / "cfg.py"
    cfg.write_text(ASPP.read_text() + "\n_base_ = ['base.py']\n")
    options = lambda: bridge.MMSegDecoder.Options(spec=str(cfg))  # noqa: E731
    first = bridge.MMSegDecoder.content_ids(options())
    assert set(first) == {"mmseg_config", "mmseg_base:base.py"}
    cfg.write_text(cfg.read_text().replace("channels=256", "channels=128"))
    second = bridge.MMSegDecoder.content_ids(options())
    assert second["mmseg_config"] != first["mmseg_config"] and second["mmseg_base:base.py"] == first["mmseg_base:base.py"]
    base.write_text("norm_cfg = dict(type='GN')\n")
    assert bridge.MMSegDecoder.content_ids(options())["mmseg_base:base.py"] != first["mmseg_base:base.py"]
    missing = bridge.MMSegDecoder.Options.model_construct(spec=str(tmp_path / "no.py"))  # (validation also says so)
    _one_line_error(lambda: bridge.MMSegDecoder.content_ids(missing), "file not found")


@needs_mmseg
def test_aspp_config_maps_levels_and_predicts_at_image_size(tiny_world):
    from transfer.data import dataset_settings, open_transfer_data

    torch.manual_seed(0)
    model = _build(ASPP)
    enc, dec = model.encoder, model.decoder
    # output_stride=16 from the config's HarnessEncoder backbone; MMSeg levels 0..3 = harness 1..4.
    assert enc.strides == [2, 4, 8, 16, 16] and dec.levels == [1, 2, 3, 4]
    assert dec.used_levels(5) == [3, 4]  # ASPP on MMSeg level 3, the FCN auxiliary head on level 2
    assert dec.head.in_channels == enc.channels[4] and dec.aux_heads[0].in_channels == enc.channels[3]
    assert dec.head.num_classes == 7 and dec.head.out_channels == 7
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in dec.modules())  # SyncBN ran as BN

    _, _, train_images, _, _ = open_transfer_data(dataset_settings("synth"), tiny_world, 4, 0)
    x, _ = train_images.batch(torch.Generator().manual_seed(0), 2)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 7, *x.shape[-2:])
        features = model.encode(x)
        sparse = [f if i in dec.used_levels(5) else None for i, f in enumerate(features)]  # a feature cache's view
        assert dec(sparse, (50, 70)).shape == (2, 7, 50, 70)


@needs_mmseg
def test_aspp_config_trains_with_the_heads_own_loss(tiny_world):
    from transfer.data import dataset_settings, open_transfer_data

    torch.manual_seed(0)
    dataset, _, train_images, _, _ = open_transfer_data(dataset_settings("synth"), tiny_world, 4, 0)
    model = _build(ASPP, num_classes=dataset.num_classes)
    x, y = train_images.batch(torch.Generator().manual_seed(0), 4)
    y = y.clone()
    y[:, :4] = dataset.ignore_index

    # The head's loss is the config's: with avg_non_ignore=True and dropout off it is plain
    # cross-entropy over the non-ignored pixels; the auxiliary head adds its weighted term.
    model.eval()
    with torch.no_grad():
        features = model.encode(x)
        plain = F.cross_entropy(model.decoder(features, y.shape[-2:]), y, ignore_index=dataset.ignore_index)
        head_only = _build(ASPP, num_classes=dataset.num_classes, auxiliary=False).decoder
        head_only.load_state_dict(model.decoder.state_dict(), strict=False)
        head_only.eval()
        assert torch.allclose(head_only.loss(features, y, dataset.ignore_index), plain, atol=1e-5)
        assert model.decoder.loss(features, y, dataset.ignore_index) > plain

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = model.decoder.loss(model.encode(x), y, dataset.ignore_index)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert_below(losses[-1], losses[0], "aspp: loss at the 5th step vs the 1st (one batch)", losses)


@needs_mmseg
def test_full_mmseg_model_builds_on_the_harness_encoder():
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    bridge.register_harness_backbone()
    cfg = Config.fromfile(str(ASPP))
    cfg.model.backbone.arch = "resnet10t"
    cfg.model.decode_head.update(in_channels=512, num_classes=7)
    cfg.model.auxiliary_head.update(in_channels=256, num_classes=7)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):  # as MMSeg's Runner sets it
        model = MODELS.build(bridge._bn_not_sync(cfg.model.to_dict()))
    x = torch.randn(2, 3, 48, 64)
    assert model(x, mode="tensor").shape[:2] == (2, 7)
    samples = [SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 7, (1, 48, 64))),
                             metainfo={"img_shape": (48, 64), "pad_shape": (48, 64)}) for _ in range(2)]
    losses = model(x, samples, mode="loss")
    assert {"decode.loss_ce", "aux.loss_ce"} <= set(losses)


@needs_mmseg
@pytest.mark.parametrize("check_up_front", [True, False])
def test_head_needing_compiled_ops_is_one_line(tmp_path, monkeypatch, check_up_front):
    if bridge._mmseg() and bridge._ops_missing() is None:
        pytest.skip("this mmcv has its compiled ops")
    if not check_up_front:  # an unlisted head: recognised from the build error instead
        monkeypatch.setattr(bridge, "OPS_HEADS", set())
    cfg = _variant(tmp_path, "m2f.py", "type='ASPPHead'", "type='Mask2FormerHead'")
    _one_line_error(lambda: _build(cfg), "Mask2FormerHead needs compiled mmcv.ops", "--decoder mask2former")


@needs_mmseg
@pytest.mark.parametrize("make, needle", [
    (lambda d: d / "missing.py", "file not found"),
    (lambda d: (d / "cfg.yaml").write_text("model: {}\n") and d / "cfg.yaml", "not a Python config"),
    (lambda d: (d / "syntax.py").write_text("model = dict(\n") and d / "syntax.py", "not valid Python"),
    (lambda d: (d / "nohead.py").write_text("model = dict(type='EncoderDecoder')\n") and d / "nohead.py",
     "no model.decode_head"),
    (lambda d: _variant(d, "idx.py", "in_index=3", "in_index=4"), "in_index 4"),
    (lambda d: _variant(d, "unknown.py", "type='ASPPHead'", "type='NoSuchHead'"), "unknown head type 'NoSuchHead'"),
])
def test_bad_configs_are_one_line(tmp_path, make, needle):
    _one_line_error(lambda: _build(make(tmp_path)), needle)


@needs_mmseg
def test_bridge_runs_from_a_manifest_and_from_the_cli(tiny_world, tmp_path, capsys, monkeypatch):
    import json
    import shutil

    from bench.cli import main
    from bench.study.runner import run_manifest

    # The manifest names the config relative to itself; the cell keeps that name, its fingerprint
    # the config's contents (not its path).
    (tmp_path / "cfg").mkdir()
    shutil.copy(ASPP, tmp_path / "cfg" / "aspp.py")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"""
name: mm
out: {tmp_path / 'results'}
data:
  synth: {{sequences: 3, frames: 4, height: 48, width: 144, seed: 0, crops_per_class: 6}}
backbones: [{{name: random, arch: resnet10t}}]
datasets: [{{name: synth}}]
transfer: {{protocols: [full, frozen], decoders: ["mmseg:cfg/aspp.py"], train_sizes: [2], steps: 2,
           batch_size: 2, eval_every: 2}}
""")
    assert run_manifest(manifest, progress=False, plots=False) == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("*/record.json")]
    assert sorted(p.name for p in (tmp_path / "results" / "runs").iterdir()) == [
        "random__synth__frozen__mmseg-aspp__n2__s0", "random__synth__full__mmseg-aspp__n2__s0"]
    assert all(r["status"] == "ok" and r["cell"]["decoder"] == "mmseg:cfg/aspp.py" for r in records)
    assert all(r["config"]["decoder_content"]["mmseg_config"] and str(tmp_path) not in json.dumps(
        {k: v for k, v in r["config"].items() if k not in ("dataset_root", "checkpoint", "decoder_spec")})
        for r in records)

    monkeypatch.chdir(tmp_path)
    code = main(["transfer", "--checkpoint", "none", "--arch", "resnet10t", "--root", str(tiny_world),
                 "--protocol", "frozen", "--decoder", "mmseg:cfg/aspp.py", "--train-size", "2", "--steps", "2",
                 "--batch-size", "2", "--out", "cli", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "cli" / "record.json").read_text())["feature_cache"]["computed"] > 0
