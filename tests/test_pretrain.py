import csv

import pytest
import torch

import pretrain.depth_supervised as ds
from bench.checkpoint import load_checkpoint
from pretrain.api import run_pretrain
from pretrain.loop import Diverged


def _config(world, **kw):
    return {"name": "p", "method": "depth_supervised", "arch": "resnet10t", "root": str(world), "data_id": "tiny",
            "steps": 8, "batch_size": 2, "lr": 1e-3, "seed": 0, "state_every": 3, **kw}


def test_depth_head_init_follows_the_nan_guideline(tiny_world):
    task = ds.DepthSupervised(_config(tiny_world))
    head = task.decoder.head_conv(0)
    assert 0.4 < float(head.weight.detach().std()) < 0.6 and torch.count_nonzero(head.bias) == 0


def test_checkpoint_format_and_history(tiny_world, tmp_path):
    path = run_pretrain(_config(tiny_world), tmp_path, progress=False, log=lambda m: None)
    ckpt = load_checkpoint(path)
    for key in ("arch", "method", "data", "steps", "normalization", "seed", "harness_version"):
        assert key in ckpt.meta
    assert ckpt.meta["decoder"]["kind"] == "monodepth2" and ckpt.decoder
    with open(tmp_path / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 9)) and "silog" in rows[0]
    assert not (tmp_path / "state.pt").exists()
    # A second call with the same config is a no-op.
    stamp = path.stat().st_mtime_ns
    run_pretrain(_config(tiny_world), tmp_path, progress=False, log=lambda m: None)
    assert path.stat().st_mtime_ns == stamp


class _Crash(Exception):
    pass


def test_resume_after_crash_matches_an_uninterrupted_run(tiny_world, tmp_path, monkeypatch):
    torch.set_num_threads(1)  # identical kernels in both runs
    reference = load_checkpoint(run_pretrain(_config(tiny_world), tmp_path / "ref", progress=False, log=lambda m: None))

    original = ds.DepthSupervised.loss
    calls = {"n": 0}

    def crashing(self, gen, bs):
        calls["n"] += 1
        if calls["n"] == 5:  # after the snapshot at step 3
            raise _Crash()
        return original(self, gen, bs)

    monkeypatch.setattr(ds.DepthSupervised, "loss", crashing)
    with pytest.raises(_Crash):
        run_pretrain(_config(tiny_world), tmp_path / "run", progress=False, log=lambda m: None)
    assert (tmp_path / "run" / "state.pt").exists() and not (tmp_path / "run" / "checkpoint.safetensors").exists()
    monkeypatch.setattr(ds.DepthSupervised, "loss", original)
    messages = []
    resumed = load_checkpoint(run_pretrain(_config(tiny_world), tmp_path / "run", progress=False, log=messages.append))
    assert "resumed from step 3" in messages
    for k, v in reference.encoder.items():
        torch.testing.assert_close(resumed.encoder[k], v, rtol=1e-5, atol=1e-6)
    with open(tmp_path / "run" / "history.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 9))


def test_nan_loss_raises_diverged(tiny_world, tmp_path, monkeypatch):
    monkeypatch.setattr(ds.DepthSupervised, "loss",
                        lambda self, gen, bs: (torch.tensor(float("nan"), requires_grad=True), {}))
    with pytest.raises(Diverged, match="at step 1$"):
        run_pretrain(_config(tiny_world), tmp_path, progress=False, log=lambda m: None)
    assert not (tmp_path / "checkpoint.safetensors").exists()


def test_classification_checkpoint_has_no_decoder(tiny_world, tmp_path):
    path = run_pretrain(_config(tiny_world, method="classification", batch_size=4), tmp_path, progress=False,
                        log=lambda m: None)
    ckpt = load_checkpoint(path)
    assert ckpt.decoder is None and ckpt.meta["decoder"] is None and ckpt.meta["method"] == "classification"
