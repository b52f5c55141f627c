"""Cell fingerprints are the identity of a result: a changed fingerprint re-runs a finished cell
and orphans its record. These pin the fingerprints of three representative cells, resolved by
the one resolver (`transfer.api.resolve_cell_config`), to the values the harness computed before
the transfer-config assembly moved there (v0.1.0, `bench.matrix.cell_config`). Change a value
only together with a change of what a cell computes, and say so in the change's notes.

Changed since: a cell without a checkpoint (the random baseline) records its `random_init`
scheme, whose default became torchvision's (issue 15); that cell's pin shows it is the only change."""

from bench.core.records import fingerprint
from transfer.api import Cell, TransferSettings, resolve_cell_config

SHA = "ab" * 32  # a checkpoint's content hash stands for the file


def _fp(cell, settings, dataset, **kw) -> str:
    return resolve_cell_config(cell, TransferSettings(**settings), dataset=dataset, **kw)["fingerprint"]


def test_a_linear_probe_on_the_generated_world():
    cell = Cell("depth", "depth_supervised", "resnet18", "synth", "linear", "linear", 16, 0)
    fp = _fp(cell, {"steps": 80, "batch_size": 4, "eval_every": 20}, {"name": "synth"}, dataset_root="/x",
             data_id="world", checkpoint="/x/c.safetensors", checkpoint_sha256=SHA)
    assert fp == "063d7abdaacf4fd937a004de9b60e6f213ba4263488eadf12f0c6cf708020d0d"


def test_a_frozen_deeplab_cell_with_every_optional_setting():
    cell = Cell("random", "none", "resnet18", "cityscapes", "frozen", "deeplabv3", 16, 1)
    settings = {"init": "encoder", "steps": 300, "batch_size": 8, "eval_every": 50, "keep_weights": True,
                "decoder_options": {"deeplabv3": {"output_stride": 8}}, "feature_cache_views": 8, "augment": False,
                "optimizer": {"frozen/deeplabv3": {"optimizer": "adamw", "lr": 1e-3}}}
    config = resolve_cell_config(cell, TransferSettings(**settings), dataset={"name": "cityscapes"},
                                 dataset_root="/data/cs", data_id="/data/cs", processes=2)
    assert config["random_init"] == "torchvision"
    assert config["fingerprint"] == "ec3899d73a025a71afffa8d68d3f31e15b9cce172060d896c856e15a94138517"
    # Without the new key, the fingerprint is v0.1.0's: nothing else about the cell moved.
    fingerprinted = {k: v for k, v in config.items() if k not in
                     ("fingerprint", "dataset_root", "checkpoint", "state_every", "random_init")}
    assert fingerprint(fingerprinted) == "d72690933ba13343b51a0ae1da53ca082ac0979a4c76727f1196a2bf057eb434"


def test_a_full_cell_with_dataset_geometry_and_an_optimizer_layer():
    cell = Cell("flow", "flow", "resnet10t", "nyuv2", "full", "monodepth2", 4, 2)
    settings = {"init": "encoder+decoder", "steps": 10, "batch_size": 2, "eval_every": 5, "keep_weights": True,
                "optimizer": {"full": {"lr": 3e-4, "encoder_lr_mult": 0.1}}}
    fp = _fp(cell, settings, {"name": "nyuv2", "classes": 13, "resize": "240x320"}, dataset_root="/data/nyu",
             data_id="/data/nyu", checkpoint="/y.safetensors", checkpoint_sha256=SHA)
    assert fp == "50c8b0ec086c786803579da863641a72fbba99ee0c1543cfc236622b5730dec5"


def test_paths_and_how_often_are_outside_the_fingerprint():
    cell = Cell("depth", "depth_supervised", "resnet18", "synth", "linear", "linear", 16, 0)
    a = resolve_cell_config(cell, TransferSettings(state_every=5), dataset={"name": "synth"}, dataset_root="/a",
                            data_id="w", checkpoint="/a/c.safetensors", checkpoint_sha256=SHA, device="cpu")
    b = resolve_cell_config(cell, TransferSettings(state_every=50), dataset={"name": "synth"}, dataset_root="/b",
                            data_id="w", checkpoint="/b/c.safetensors", checkpoint_sha256=SHA)
    assert a["fingerprint"] == b["fingerprint"]
    assert (a["state_every"], a["device"], a["dataset_root"]) == (5, "cpu", "/a") and "device" not in b
