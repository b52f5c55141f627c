"""Mask2Former transfers as Depth Anything's (MMSegmentation's recipe, encoder 3e-6 and decoder
10x on ADE20K and Cityscapes, 896x896 crops there), with MMSeg's gradient clipping and no weight
decay on normalisation layers and query/level embeddings."""

import pytest
import torch

from tests.conftest import cell_config
from transfer.api import Cell, TransferSettings, resolve_cell_config
from transfer.model import build_model
from transfer.protocols import OptimizerPreset, param_groups, resolve_preset

TINY = {"hidden_dim": 32, "num_queries": 4, "decoder_layers": 2, "pixel_decoder_layers": 1, "train_points": 64}


def test_presets_per_dataset():
    ade = resolve_preset("full", "mask2former", dataset="ade20k")
    assert (ade.lr, ade.encoder_lr_mult, ade.lr * ade.encoder_lr_mult) == pytest.approx((3e-5, 0.1, 3e-6))
    assert (ade.weight_decay, ade.grad_clip, ade.decay_norms_and_embeddings) == (0.05, 0.01, False)
    assert resolve_preset("full", "mask2former", dataset="cityscapes").lr == pytest.approx(3e-5)
    other = resolve_preset("full", "mask2former", dataset="kitti")
    assert other.lr == pytest.approx(1e-4) and other.grad_clip == 0.01  # MMSeg's recipe without Depth Anything's lr
    # A manifest layer keyed by dataset overrides only there.
    layer = {"full/mask2former@kitti": {"lr": 5e-5}}
    assert resolve_preset("full", "mask2former", layer, dataset="kitti").lr == 5e-5
    assert resolve_preset("full", "mask2former", layer, dataset="ade20k").lr == pytest.approx(3e-5)
    # Presets that do not use the new fields keep their v0.1.0 form (and fingerprints).
    assert set(resolve_preset("full", "monodepth2").as_config()) == {
        "optimizer", "lr", "encoder_lr_mult", "weight_decay", "momentum", "warmup_steps", "poly_power"}


def test_896_crops_on_ade20k_and_cityscapes_unless_given():
    settings = TransferSettings()
    cfg = lambda name, decoder, **geo: resolve_cell_config(  # noqa: E731
        Cell("b", "m", "resnet10t", name, "full", decoder, 16, 0), settings, dataset={"name": name, **geo},
        dataset_root="/d", data_id="d", checkpoint="/c", checkpoint_sha256="ab")["dataset"]
    assert (cfg("ade20k", "mask2former")["crop"], cfg("ade20k", "mask2former")["resize"]) == ([896, 896], 896)
    assert cfg("cityscapes", "mask2former")["crop"] == [896, 896]
    assert cfg("cityscapes", "deeplabv3")["crop"] == [512, 1024]  # other decoders keep the dataset's
    assert cfg("ade20k", "mask2former", crop="512x512")["crop"] == [512, 512]  # what the user gives wins


def test_no_weight_decay_on_norms_and_embeddings():
    model, _ = build_model("resnet10t", None, "mask2former", "encoder", 5, TINY)
    groups = param_groups(model, "full", 1e-4, 0.1, decay_norms_and_embeddings=False)
    exempt = {id(p) for g in groups if g.get("weight_decay") == 0.0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in exempt}
    assert any("queries_embedder" in n for n in names) and any("queries_features" in n for n in names)
    assert any("level_embed" in n for n in names) and any(n.startswith("encoder.bn1") for n in names)
    assert not any(n.endswith("conv1.weight") or "class_predictor" in n for n in names)
    assert {g["name"] for g in groups} == {"decoder", "decoder (no decay)", "encoder", "encoder (no decay)"}
    all_params = [p for g in groups for p in g["params"]]
    assert len(all_params) == len({id(p) for p in all_params}) == sum(1 for _ in model.parameters())
    plain = param_groups(build_model("resnet10t", None, "mask2former", "encoder", 5, TINY)[0], "full", 1e-4, 0.1)
    assert [g["name"] for g in plain] == ["decoder", "encoder"]  # the default: one group each


def test_gradients_are_clipped_when_the_preset_says_so(tiny_world, tmp_path, monkeypatch):
    import transfer.train as train_mod

    norms = []
    original = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        norms.append(max_norm)
        return original(params, max_norm, *a, **k)

    monkeypatch.setattr(train_mod.torch.nn.utils, "clip_grad_norm_", spy)
    cell = Cell("b", "m", "resnet10t", "synth", "frozen", "monodepth2", 4, 0)
    from transfer.api import run_cell

    run_cell(cell_config(tiny_world, cell, steps=2, batch_size=2, eval_every=2, optim={"grad_clip": 0.5}),
             tmp_path / "clipped", progress=False)
    assert norms == [0.5, 0.5]
    record = run_cell(cell_config(tiny_world, cell, steps=2, batch_size=2, eval_every=2), tmp_path / "plain",
                      progress=False)
    assert norms == [0.5, 0.5] and "grad_clip" not in record["optimizer"]
    assert OptimizerPreset(grad_clip=0.01).as_config()["grad_clip"] == 0.01
