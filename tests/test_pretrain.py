import csv
import json
import pickle

import pytest
import torch

import pretrain.methods.depth_supervised as ds
from bench.core import results_folder as rf
from bench.core.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from bench.cli import main
from bench.core.errors import UserError
from bench.core.models.backbones import create_encoder
from pretrain.api import build_method, run_pretrain
from pretrain.loop import Diverged


def _config(world, **kw):
    return {"name": "p", "method": "depth_supervised", "arch": "resnet10t", "root": str(world), "data_id": "tiny",
            "steps": 8, "batch_size": 2, "lr": 1e-3, "seed": 0, "state_every": 3, **kw}


def _quiet(msg):
    pass


def _history(path):
    with open(path / "history.csv") as f:
        return list(csv.DictReader(f))


def test_depth_head_init_follows_the_nan_guideline(tiny_world):
    task = build_method(_config(tiny_world))
    head = task.decoder.head_conv(0)
    assert 0.4 < float(head.weight.detach().std()) < 0.6 and torch.count_nonzero(head.bias) == 0
    task = build_method(_config(tiny_world, options={"head_init_std": 0.1}))
    assert 0.07 < float(task.decoder.head_conv(0).weight.detach().std()) < 0.13


def test_checkpoint_format_and_history(tiny_world, tmp_path):
    path = run_pretrain(_config(tiny_world), tmp_path, progress=False, log=_quiet)
    ckpt = load_checkpoint(path)
    for key in ("arch", "method", "data", "steps", "normalization", "seed", "harness_version"):
        assert key in ckpt.meta
    assert ckpt.meta["decoder"]["kind"] == "monodepth2" and ckpt.decoder
    rows = _history(tmp_path)
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    assert {"silog", "grad_norm", "nonfinite_steps", "empty_batches"} <= set(rows[0])
    assert not (tmp_path / "state.pt").exists()
    # A second call with the same config is a no-op, also when defaults are spelled out.
    stamp = path.stat().st_mtime_ns
    run_pretrain(_config(tiny_world, options={"silog_lambda": 0.85}, crop=None), tmp_path, progress=False, log=_quiet)
    assert path.stat().st_mtime_ns == stamp


class _Crash(Exception):
    pass


@pytest.mark.usefixtures("one_thread")  # identical kernels in both runs
def test_resume_after_crash_matches_an_uninterrupted_run(tiny_world, tmp_path, monkeypatch):
    reference = load_checkpoint(run_pretrain(_config(tiny_world), tmp_path / "ref", progress=False, log=_quiet))

    original = ds.DepthSupervised.loss
    calls = {"n": 0}

    def crashing(self, gen, bs):
        calls["n"] += 1
        if calls["n"] == 5:  # after the snapshot at step 3
            raise _Crash()
        return original(self, gen, bs)

    monkeypatch.setattr(ds.DepthSupervised, "loss", crashing)
    with pytest.raises(_Crash):
        run_pretrain(_config(tiny_world), tmp_path / "run", progress=False, log=_quiet)
    assert (tmp_path / "run" / "state.pt").exists() and not (tmp_path / "run" / "checkpoint.safetensors").exists()
    monkeypatch.setattr(ds.DepthSupervised, "loss", original)
    messages = []
    resumed = load_checkpoint(run_pretrain(_config(tiny_world), tmp_path / "run", progress=False, log=messages.append))
    assert "resumed from step 3" in messages
    for k, v in reference.encoder.items():
        torch.testing.assert_close(resumed.encoder[k], v, rtol=1e-5, atol=1e-6)
    assert [int(r["step"]) for r in _history(tmp_path / "run")] == list(range(1, 9))


def _inject(monkeypatch, bad_steps, kind="loss"):
    """Make the depth loss non-finite (or its gradient, for kind='grad') at the given steps."""
    original = ds.DepthSupervised.loss
    calls = {"n": 0}

    def loss(self, gen, bs):
        calls["n"] += 1
        value, terms = original(self, gen, bs)
        if calls["n"] in bad_steps:
            if kind == "loss":
                value = value * float("nan")
            else:  # finite loss, NaN gradient: sqrt at 0 has an infinite derivative, times 0 is NaN
                value = value + 0.0 * torch.sqrt(torch.zeros((), requires_grad=True) * value)
        return value, terms

    monkeypatch.setattr(ds.DepthSupervised, "loss", loss)


@pytest.mark.parametrize("kind", ["loss", "grad"])
@pytest.mark.usefixtures("one_thread")
def test_isolated_nonfinite_steps_are_skipped_counted_and_leave_weights_alone(tiny_world, tmp_path, monkeypatch, kind):
    _inject(monkeypatch, {3, 6}, kind)
    ckpt = load_checkpoint(run_pretrain(_config(tiny_world), tmp_path, progress=False, log=_quiet))
    rows = _history(tmp_path)
    assert [int(r["nonfinite_steps"]) for r in rows] == [0, 0, 1, 1, 1, 2, 2, 2]
    assert all(torch.isfinite(v).all() for v in ckpt.encoder.values() if v.is_floating_point())
    assert ckpt.meta["summary"]["nonfinite_steps"] == 2


def test_bad_step_does_not_move_the_weights(tiny_world, monkeypatch):
    from pretrain.loop import train
    from bench.core.checkpoint import state_sha256
    import tempfile
    from pathlib import Path

    task = build_method(_config(tiny_world, steps=1))
    before = state_sha256(task.encoder.state_dict())
    _inject(monkeypatch, {1}, "grad")
    with tempfile.TemporaryDirectory() as d, pytest.raises(Diverged, match="last good step 0"):
        train(task, _config(tiny_world, steps=1, max_bad_steps=5), "fp", Path(d), progress=False, log=_quiet)
    assert state_sha256(task.encoder.state_dict()) == before  # weights and BatchNorm buffers alike


def test_consecutive_nonfinite_steps_stop_as_diverged_and_keep_the_last_good_weights(tiny_world, tmp_path, monkeypatch):
    _inject(monkeypatch, {4, 5, 6, 7, 8})
    with pytest.raises(Diverged, match=r"3 consecutive non-finite steps up to step 6 \(loss nan\); last good step 3"):
        run_pretrain(_config(tiny_world, max_bad_steps=3), tmp_path, progress=False, log=_quiet)
    assert not (tmp_path / "checkpoint.safetensors").exists()
    info = json.loads((tmp_path / "diverged.json").read_text())
    assert info["status"] == "diverged" and info["last_good_step"] == 3 and info["step"] == 6
    meta = read_checkpoint_meta(tmp_path / rf.LAST_GOOD)
    assert meta["status"] == "diverged" and meta["steps"] == 3
    rows = _history(tmp_path)
    assert [int(r["nonfinite_steps"]) for r in rows] == [0, 0, 0, 1, 2, 3]


def test_cli_reports_divergence_in_one_line(tiny_world, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ds.DepthSupervised, "loss", lambda self, gen, bs: (torch.tensor(float("inf")), {}))
    code = main(["pretrain", "--method", "depth_supervised", "--arch", "resnet10t", "--root", str(tiny_world),
                 "--steps", "5", "--batch-size", "2", "--max-bad-steps", "2", "--out", str(tmp_path / "o"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 3 and len(err.splitlines()) == 1 and "diverged" in err and rf.LAST_GOOD in err


def test_batches_without_valid_depth_are_skipped_and_counted(tiny_world, tmp_path, monkeypatch):
    """Steps 1 and 3 see depth maps with no measurement at all (a LiDAR frame without returns)."""
    original = ds.DepthSupervised.loss
    calls = {"n": 0}

    def loss(self, gen, bs):
        calls["n"] += 1
        if calls["n"] in (1, 3):
            draw = self.batches.draw
            self.batches.draw = lambda g, n: {**draw(g, n), "depth": torch.zeros(n, 48, 144)}
            try:
                return original(self, gen, bs)
            finally:
                self.batches.draw = draw
        return original(self, gen, bs)

    monkeypatch.setattr(ds.DepthSupervised, "loss", loss)
    run_pretrain(_config(tiny_world, steps=4), tmp_path, progress=False, log=_quiet)
    rows = _history(tmp_path)
    assert [int(r["empty_batches"]) for r in rows] == [1, 1, 2, 2]
    assert rows[0]["loss"] == "nan" and rows[0]["silog"] == "" and rows[1]["silog"] != ""


def test_sparse_depth_supervision_uses_the_requested_fraction(tiny_world):
    task = build_method(_config(tiny_world, options={"sparse_fraction": 0.1}))
    _, terms = task.loss(torch.Generator().manual_seed(0), 2)
    dense = build_method(_config(tiny_world))
    _, dense_terms = dense.loss(torch.Generator().manual_seed(0), 2)
    ratio = float(terms["valid_fraction"]) / float(dense_terms["valid_fraction"])
    assert 0.07 < ratio < 0.13


def test_classification_checkpoint_has_no_decoder(tiny_world, tmp_path):
    path = run_pretrain(_config(tiny_world, method="classification", batch_size=4), tmp_path, progress=False,
                        log=_quiet)
    ckpt = load_checkpoint(path)
    assert ckpt.decoder is None and ckpt.meta["decoder"] is None and ckpt.meta["method"] == "classification"


def test_unknown_option_is_one_line(tiny_world, tmp_path):
    with pytest.raises(UserError, match=r"^--method depth_supervised option silog_lamda: Extra inputs"):
        run_pretrain(_config(tiny_world, options={"silog_lamda": 1}), tmp_path, progress=False, log=_quiet)
    with pytest.raises(UserError, match="head_init_std"):
        run_pretrain(_config(tiny_world, options={"head_init_std": -1}), tmp_path, progress=False, log=_quiet)


# --init: "Depth" (from ImageNet weights) versus "Depth-Rand" (from scratch).

def _imagenet_style_file(tmp_path, arch="resnet10t"):
    """A torchvision/timm-style classifier state dict: the encoder's keys plus an fc head."""
    torch.manual_seed(123)
    enc = create_encoder(arch)
    state = {**enc.state_dict(), "fc.weight": torch.randn(10, enc.channels[-1]), "fc.bias": torch.zeros(10)}
    path = tmp_path / "imagenet.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    return path, enc.state_dict()


def test_init_from_an_imagenet_state_dict_loads_every_encoder_tensor(tiny_world, tmp_path):
    path, expected = _imagenet_style_file(tmp_path)
    task = build_method(_config(tiny_world, init=str(path)))
    for k, v in expected.items():
        assert torch.equal(task.encoder.state_dict()[k], v), k


def test_init_changes_the_fingerprint_with_the_file_content(tiny_world, tmp_path):
    from pretrain.api import pretrain_fingerprint, resolve_config

    path, _ = _imagenet_style_file(tmp_path)
    a = pretrain_fingerprint(resolve_config(_config(tiny_world, init=str(path))))
    torch.save({"fc.weight": torch.zeros(1)}, path)
    b = pretrain_fingerprint(resolve_config(_config(tiny_world, init=str(path))))
    c = pretrain_fingerprint(resolve_config(_config(tiny_world)))
    assert len({a, b, c}) == 3


def test_init_from_a_harness_checkpoint_reuses_encoder_and_decoder_body(tiny_world, tiny_depth_ckpt):
    task = build_method(_config(tiny_world, init=str(tiny_depth_ckpt)))
    ckpt = load_checkpoint(tiny_depth_ckpt)
    assert all(torch.equal(task.encoder.state_dict()[k], v) for k, v in ckpt.encoder.items())
    own = task.decoder.state_dict()
    assert all(torch.equal(own[k], v) for k, v in ckpt.decoder.items() if not k.startswith("heads."))


def test_init_refuses_partial_foreign_and_pickled_code(tiny_world, tmp_path):
    enc = create_encoder("resnet10t")
    partial = {k: v for k, v in list(enc.state_dict().items())[:-3]}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(UserError, match=r"^--init .*partial.pth: loads \d+/\d+ encoder tensors"):
        build_method(_config(tiny_world, init=str(tmp_path / "partial.pth")))

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(UserError, match="weights_only=True"):
        build_method(_config(tiny_world, init=str(tmp_path / "evil.pth")))
    assert not (tmp_path / "pwned").exists()

    other = tmp_path / "r18.safetensors"
    save_checkpoint(other, create_encoder("resnet18").state_dict(),
                    {"arch": "resnet18", "method": "x", "data": {}, "steps": 1, "normalization": {}, "seed": 0})
    with pytest.raises(UserError, match="resnet18 checkpoint cannot initialise --arch resnet10t"):
        build_method(_config(tiny_world, init=str(other)))


def test_a_run_without_one_good_step_is_diverged_even_if_shorter_than_k(tiny_world, tmp_path, monkeypatch):
    _inject(monkeypatch, set(range(1, 9)))
    with pytest.raises(Diverged, match="last good step 0"):
        run_pretrain(_config(tiny_world, max_bad_steps=20), tmp_path, progress=False, log=_quiet)
    assert not (tmp_path / "checkpoint.safetensors").exists() and (tmp_path / rf.LAST_GOOD).exists()


def test_the_same_config_trained_twice_gives_the_same_file(tiny_world, tmp_path):
    # Cells hash their checkpoint: a re-trained (or differently executed) pre-training of the same
    # config must not change it, or every dependent cell would look stale.
    import shutil

    from bench.core.checkpoint import file_sha256

    moved = tmp_path / "elsewhere" / "synth"
    shutil.copytree(tiny_world, moved)
    config = {"method": "depth_supervised", "arch": "resnet10t", "data_id": "tiny", "steps": 2, "batch_size": 2,
              "lr": 1e-3, "seed": 0}
    a = run_pretrain({**config, "name": "a", "root": str(tiny_world)}, tmp_path / "a", progress=False,
                     log=lambda m: None)
    b = run_pretrain({**config, "name": "b", "root": str(moved)}, tmp_path / "b", progress=False, log=lambda m: None)
    assert file_sha256(a) == file_sha256(b)
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["wall_s"] > 0
