import pytest
import torch

from bench.core.checkpoint import (load_checkpoint, load_encoder_weights, read_checkpoint_meta, save_checkpoint,
                              state_sha256)
from bench.core.errors import UserError
from bench.core.models.backbones import create_encoder

META = {"arch": "resnet10t", "method": "test", "data": {}, "steps": 1, "seed": 0,
        "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3}}


def test_round_trip(tmp_path):
    enc = create_encoder("resnet10t")
    dec = {"w": torch.randn(3, 3)}
    path = save_checkpoint(tmp_path / "c.safetensors", enc.state_dict(), META, decoder_state=dec)
    ckpt = load_checkpoint(path)
    assert ckpt.meta["arch"] == "resnet10t" and "harness_version" in ckpt.meta
    assert read_checkpoint_meta(path) == ckpt.meta  # the header-only read agrees with a full load
    assert state_sha256(ckpt.encoder) == state_sha256(enc.state_dict())
    assert torch.equal(ckpt.decoder["w"], dec["w"])
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind
    fresh = create_encoder("resnet10t")
    report = load_encoder_weights(fresh, ckpt.encoder)
    assert report["loaded"] == report["total"] and not report["missing"]
    assert state_sha256(fresh.state_dict()) == state_sha256(enc.state_dict())


def test_partial_load_refused_unless_allowed(tmp_path):
    state = create_encoder("resnet10t").state_dict()
    partial = {k: v for k, v in state.items() if not k.startswith("layer4")}
    with pytest.raises(UserError, match="encoder tensors"):
        load_encoder_weights(create_encoder("resnet10t"), partial)
    report = load_encoder_weights(create_encoder("resnet10t"), partial, allow_partial=True)
    assert report["missing"] and all(k.startswith("layer4") for k in report["missing"])


def test_corrupt_and_foreign_files_are_user_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage")
    for read in (load_checkpoint, read_checkpoint_meta):
        with pytest.raises(UserError, match="not a readable"):
            read(bad)
        with pytest.raises(UserError, match="not found"):
            read(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"encoder.x": torch.zeros(1)}, tmp_path / "foreign.safetensors")
    for read in (load_checkpoint, read_checkpoint_meta):
        with pytest.raises(UserError, match="no depth2seg metadata"):
            read(tmp_path / "foreign.safetensors")
