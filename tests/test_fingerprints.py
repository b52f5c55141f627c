"""Cell fingerprints are the identity of a result: a changed fingerprint re-runs a finished cell
and orphans its record. These pin the fingerprints of three representative cells, resolved by
the one resolver (`transfer.api.resolve_cell_config`).

History, each change made by an issue that changed what cells compute:
- v0.1.0: the transfer-config assembly moved into the resolver with every fingerprint unchanged
  (the `V010` values, computed with `bench.study.matrix.cell_config` before the move);
- issue 15: a cell without a checkpoint records its `random_init` scheme (torchvision's by
  default), and every cell's data settings carry the validation rule (`validation`: its
  few-shot subset is drawn from the pool minus the validation split). Without those two keys,
  each config still fingerprints to its v0.1.0 value: nothing else moved;
- issue 15, the sweep's cost: the per-level linear probe sums its levels on the stride-4 grid and
  trains with the grid loss, named `decoder_options: {loss_at: grid}` in CNN linear cells, so their
  fingerprints changed; without that key the linear cell fingerprints as before.
"""

from bench.core.records import fingerprint
from transfer.api import Cell, TransferSettings, resolve_cell_config

SHA = "ab" * 32  # a checkpoint's content hash stands for the file
AFTER_FINGERPRINT = ("fingerprint", "dataset_root", "checkpoint", "state_every", "device", "decoder_spec", "precision",
                     "num_workers")


def _resolve(cell, settings, dataset, **kw) -> dict:
    return resolve_cell_config(cell, TransferSettings(**settings), dataset=dataset, **kw)


def _v010(config: dict) -> str:
    """The fingerprint of `config` without the keys issue 15 added."""
    kept = {k: v for k, v in config.items() if k not in AFTER_FINGERPRINT and k != "random_init"}
    kept["dataset"] = {k: v for k, v in kept["dataset"].items() if k != "validation"}
    return fingerprint(_without_loss_at(kept))


def _without_loss_at(config: dict) -> dict:
    options = {k: v for k, v in (config.get("decoder_options") or {}).items() if k != "loss_at"}
    kept = {k: v for k, v in config.items() if k != "decoder_options"}
    return {**kept, "decoder_options": options} if options else kept


def test_a_linear_probe_on_the_generated_world():
    cell = Cell("depth", "depth_supervised", "resnet18", "synth", "linear", "linear", 16, 0)
    config = _resolve(cell, {"steps": 80, "batch_size": 4, "eval_every": 20}, {"name": "synth"}, dataset_root="/x",
                      data_id="world", checkpoint="/x/c.safetensors", checkpoint_sha256=SHA)
    assert _v010(config) == "063d7abdaacf4fd937a004de9b60e6f213ba4263488eadf12f0c6cf708020d0d"
    assert config["decoder_options"] == {"loss_at": "grid"}
    before = {k: v for k, v in config.items() if k not in AFTER_FINGERPRINT}
    assert fingerprint(_without_loss_at(before)) == "56bf4fdfd5a9b5ac9f570b49a93d38eba12b86cc1ad90f24b41128aa7f590825"
    assert config["fingerprint"] == "48e2e8d21af2cceb33552b9ccdb4986565049dd652d527f64b54838af6887dec"


def test_a_frozen_deeplab_cell_with_every_optional_setting():
    cell = Cell("random", "none", "resnet18", "cityscapes", "frozen", "deeplabv3", 16, 1)
    settings = {"init": "encoder", "steps": 300, "batch_size": 8, "eval_every": 50, "keep_weights": True,
                "decoder_options": {"deeplabv3": {"output_stride": 8}}, "feature_cache_views": 8, "augment": False,
                "optimizer": {"frozen/deeplabv3": {"optimizer": "adamw", "lr": 1e-3}}}
    config = _resolve(cell, settings, {"name": "cityscapes"}, dataset_root="/data/cs", data_id="/data/cs",
                      processes=2)
    assert config["random_init"] == "torchvision"
    assert _v010(config) == "d72690933ba13343b51a0ae1da53ca082ac0979a4c76727f1196a2bf057eb434"
    assert config["fingerprint"] == "5f2088b47c49adc1dc002ba247ef2028aac82be5bb2da18adb034654b0e95431"


def test_a_full_cell_with_dataset_geometry_and_an_optimizer_layer():
    cell = Cell("flow", "flow", "resnet10t", "nyuv2", "full", "monodepth2", 4, 2)
    settings = {"init": "encoder+decoder", "steps": 10, "batch_size": 2, "eval_every": 5, "keep_weights": True,
                "optimizer": {"full": {"lr": 3e-4, "encoder_lr_mult": 0.1}}}
    config = _resolve(cell, settings, {"name": "nyuv2", "classes": 13, "resize": "240x320"}, dataset_root="/data/nyu",
                      data_id="/data/nyu", checkpoint="/y.safetensors", checkpoint_sha256=SHA)
    assert _v010(config) == "50c8b0ec086c786803579da863641a72fbba99ee0c1543cfc236622b5730dec5"
    assert config["fingerprint"] == "fda46c46a05b3ab3d017ce006b1974c2ceac610a841ee3d8f4f57f318d543964"


def test_a_sweep_is_in_the_fingerprint_and_absent_without_one():
    cell = Cell("depth", "depth_supervised", "resnet18", "synth", "linear", "linear", 16, 0)
    kw = {"dataset": {"name": "synth"}, "dataset_root": "/x", "data_id": "w", "checkpoint": "/c", "checkpoint_sha256": SHA}
    plain = resolve_cell_config(cell, TransferSettings(), **kw)
    swept = resolve_cell_config(cell, TransferSettings(sweep={"linear": {"lr": [1e-3, 1e-2]}}), **kw)
    other = resolve_cell_config(cell, TransferSettings(sweep={"full": {"lr": [1e-3, 1e-2]}}), **kw)
    assert "sweep" not in plain and swept["sweep"] == [{"lr": 1e-3}, {"lr": 1e-2}]
    assert swept["fingerprint"] != plain["fingerprint"] == other["fingerprint"]  # a sweep of another protocol


def test_paths_and_how_often_are_outside_the_fingerprint():
    cell = Cell("depth", "depth_supervised", "resnet18", "synth", "linear", "linear", 16, 0)
    a = resolve_cell_config(cell, TransferSettings(state_every=5), dataset={"name": "synth"}, dataset_root="/a",
                            data_id="w", checkpoint="/a/c.safetensors", checkpoint_sha256=SHA, device="cpu")
    b = resolve_cell_config(cell, TransferSettings(state_every=50), dataset={"name": "synth"}, dataset_root="/b",
                            data_id="w", checkpoint="/b/c.safetensors", checkpoint_sha256=SHA)
    assert a["fingerprint"] == b["fingerprint"]
    assert (a["state_every"], a["device"], a["dataset_root"]) == (5, "cpu", "/a") and "device" not in b
