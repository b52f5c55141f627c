import pytest
import torch
import transfer.train as train_mod

from bench.core.checkpoint import load_checkpoint, state_sha256
from bench.core.errors import UserError
from bench.core.records import fingerprint
from transfer.data import dataset_settings
from transfer.model import build_model
from transfer.api import run_cell


def _config(tiny_world, ckpt, protocol, decoder="monodepth2", init="auto", steps=4):
    cfg = {"cell": {"backbone": "b", "method": "m", "arch": "resnet10t", "dataset": "synth", "protocol": protocol,
                    "decoder": decoder, "train_size": 4, "seed": 0},
           "data_id": "tiny", "dataset": dataset_settings("synth"), "checkpoint_sha256": None, "init": init, "steps": steps, "batch_size": 2,
           "eval_every": 2, "optim": {"lr": 1e-2, "weight_decay": 1e-4}}
    cfg["fingerprint"] = fingerprint(cfg)
    cfg["dataset_root"], cfg["checkpoint"] = str(tiny_world), str(ckpt) if ckpt else None
    return cfg


@pytest.mark.parametrize("protocol, decoder", [("frozen", "monodepth2"), ("linear", "linear")])
def test_frozen_encoder_is_bit_identical(tiny_world, tiny_depth_ckpt, tmp_path, protocol, decoder):
    record = run_cell(_config(tiny_world, tiny_depth_ckpt, protocol, decoder), tmp_path, progress=False)
    assert record["status"] == "ok"
    assert record["encoder_sha256_before"] == record["encoder_sha256_after"]
    # ... and equal to the checkpoint's own tensors, BatchNorm running statistics included.
    assert record["encoder_sha256_after"] == state_sha256(load_checkpoint(tiny_depth_ckpt).encoder)


def test_full_protocol_moves_the_encoder(tiny_world, tiny_depth_ckpt, tmp_path):
    record = run_cell(_config(tiny_world, tiny_depth_ckpt, "full"), tmp_path, progress=False)
    assert record["encoder_sha256_before"] != record["encoder_sha256_after"]
    assert record["init"]["effective"] == "encoder+decoder"
    assert len(record["curve"]) == 2 and record["curve"][-1]["step"] == 4
    m = record["metrics"]
    assert 0 <= m["miou"] <= 1 and set(m["per_class_iou"]) == set(record["class_names"])
    assert (tmp_path / "record.json").is_file() and (tmp_path / "log.txt").read_text()


def test_decoder_reuse_replaces_only_the_last_layer(tiny_depth_ckpt):
    ckpt = load_checkpoint(tiny_depth_ckpt)
    model, info = build_model("resnet10t", ckpt, "monodepth2", "auto", num_classes=7)
    assert info["effective"] == "encoder+decoder"
    state = model.decoder.state_dict()
    body = [k for k in ckpt.decoder if not k.startswith("heads.")]
    assert body and all(torch.equal(state[k], ckpt.decoder[k]) for k in body)
    # Exactly the body is loaded: every other tensor is the fresh classifier.
    loaded = {k for k, v in state.items() if k in ckpt.decoder and v.shape == ckpt.decoder[k].shape
              and torch.equal(v, ckpt.decoder[k])}
    assert loaded == set(body) and info["decoder_tensors_loaded"] == len(body)
    assert set(state) - loaded == {"heads.0.1.weight", "heads.0.1.bias"}
    assert state["heads.0.1.weight"].shape[0] == 7 != ckpt.decoder["heads.0.1.weight"].shape[0]
    fresh, info = build_model("resnet10t", ckpt, "monodepth2", "encoder", num_classes=7)
    assert info["effective"] == "encoder"
    assert not torch.equal(fresh.decoder.state_dict()[body[0]], ckpt.decoder[body[0]])


def test_decoder_reuse_without_decoder_weights_is_an_error():
    with pytest.raises(UserError, match="needs monodepth2 decoder weights"):
        build_model("resnet10t", None, "monodepth2", "encoder+decoder", num_classes=7)


def test_nan_loss_marks_the_cell_diverged(tiny_world, tmp_path, monkeypatch):
    import transfer.train as train_mod

    monkeypatch.setattr(train_mod.F, "cross_entropy", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    record = run_cell(_config(tiny_world, None, "full"), tmp_path, progress=False)
    assert record["status"] == "diverged" and "step 1" in record["error"] and record["metrics"] is None


def test_missing_or_corrupt_world_is_a_user_error(tmp_path):
    from transfer.datasets import open_dataset

    with pytest.raises(UserError, match="missing meta.json"):
        open_dataset("synth", tmp_path)
    (tmp_path / "meta.json").write_text("{oops")
    with pytest.raises(UserError, match="corrupt world metadata"):
        open_dataset("synth", tmp_path)


def test_a_cell_killed_after_its_first_state_resumes_there_and_ends_the_same(tiny_world, tiny_depth_ckpt, tmp_path,
                                                                             monkeypatch):
    import transfer.cell_state as cell_state

    config = {**_config(tiny_world, tiny_depth_ckpt, "full", steps=6), "state_every": 2, "eval_every": 3}
    plain = run_cell(config, tmp_path / "plain", progress=False)

    saved = []
    original = cell_state.save_cell_state

    def save_then_die(path, fingerprint, step, *args):
        original(path, fingerprint, step, *args)
        saved.append(step)
        raise KeyboardInterrupt("killed")  # what SIGINT/preemption does mid-cell

    monkeypatch.setattr(train_mod, "save_cell_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_cell(config, tmp_path / "killed", progress=False)
    assert saved == [2] and (tmp_path / "killed" / "state.pt").is_file()
    assert not (tmp_path / "killed" / "record.json").exists()

    monkeypatch.setattr(train_mod, "save_cell_state", original)
    resumed = run_cell(config, tmp_path / "killed", progress=False)
    assert resumed["timings"]["resumed_from_step"] == 2 and plain["timings"]["resumed_from_step"] is None
    assert resumed["metrics"] == plain["metrics"] and resumed["curve"] == plain["curve"]
    assert resumed["encoder_sha256_after"] == plain["encoder_sha256_after"]
    assert not (tmp_path / "killed" / "state.pt").exists()  # the record supersedes it
    assert "resumed from state.pt at step 2" in (tmp_path / "killed" / "log.txt").read_text()


def test_a_state_of_another_config_is_ignored(tiny_world, tmp_path):
    first = {**_config(tiny_world, None, "frozen", steps=4), "state_every": 2}
    run_cell(first, tmp_path, progress=False)
    from transfer.cell_state import save_cell_state

    model, _ = build_model("resnet10t", None, "monodepth2", "auto", num_classes=7)
    opt = torch.optim.AdamW(model.decoder.parameters())
    save_cell_state(tmp_path / "state.pt", "another-fingerprint", 2, model, opt, [])
    record = run_cell(first, tmp_path, progress=False)
    assert record["timings"]["resumed_from_step"] is None


@pytest.mark.parametrize("protocol", ["full", "linear"])
def test_a_two_process_gloo_ddp_cell_writes_one_record(tiny_world, tiny_depth_ckpt, tmp_path, protocol):
    from bench.core.records import fingerprint

    config = _config(tiny_world, tiny_depth_ckpt, protocol, decoder="linear" if protocol == "linear" else "monodepth2")
    config = {k: v for k, v in config.items() if k not in ("fingerprint", "dataset_root", "checkpoint")}
    config["processes"] = 2
    config["fingerprint"] = fingerprint(config)
    config["dataset_root"], config["checkpoint"] = str(tiny_world), str(tiny_depth_ckpt)
    record = run_cell(config, tmp_path, progress=False)
    assert record["status"] == "ok" and record["processes"] == 2
    assert sorted(p.name for p in tmp_path.glob("record*.json")) == ["record.json"]
    assert (tmp_path / "log.rank1.txt").is_file() and "record written" in (tmp_path / "log.txt").read_text()
    # Metrics over the whole evaluation set: the ranks' confusion matrices were summed.
    assert 0 < record["metrics"]["pixel_acc"] <= 1 and len(record["curve"]) == 2
    moved = record["encoder_sha256_before"] != record["encoder_sha256_after"]
    assert moved == (protocol == "full")


def test_the_record_keeps_per_image_counts_that_reproduce_its_miou(tiny_world, tiny_depth_ckpt, tmp_path):
    from bench.core.metrics import miou_from_counts

    record = run_cell(_config(tiny_world, tiny_depth_ckpt, "linear", "linear"), tmp_path, progress=False)
    per_image = record["per_image"]
    n, k = record["dataset"]["num_eval_images"], len(record["class_names"])
    assert len(per_image["stems"]) == n and len(set(per_image["stems"])) == n
    assert torch.tensor(per_image["intersection"]).shape == (n, k) == torch.tensor(per_image["union"]).shape
    assert miou_from_counts(per_image["intersection"], per_image["union"]) == pytest.approx(
        record["metrics"]["miou"], abs=1e-12)
    # A resampled set is scored from the same counts: one image twice is that image's mIoU.
    one = miou_from_counts([per_image["intersection"][0]] * 2, [per_image["union"][0]] * 2)
    assert one == pytest.approx(miou_from_counts(per_image["intersection"][:1], per_image["union"][:1]))
