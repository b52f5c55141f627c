"""A validation split and hyper-parameter selection on it: every candidate of a sweep trains,
the best final validation mIoU is selected, and only the selected one is scored on the
evaluation set. Frozen/linear candidates train in one pass (K heads on cached features) with
the results of K separate cells."""

import json

import pytest

import transfer.train as train_mod
from bench.cli import main
from tests.conftest import cell_config
from tests.margins import assert_above, assert_below
from transfer.api import Cell, run_cell
from transfer.train import LoopResult, select_candidate

pytestmark = pytest.mark.usefixtures("one_thread")
LRS = [1e-3, 1e-2, 1e-1]


def _cell(protocol="linear"):
    return Cell("b", "m", "resnet10t", "synth", protocol, "linear" if protocol == "linear" else "monodepth2", 4, 0)


def _relative_gap(curve, reference) -> float:
    """The largest relative difference between two curves' losses, point by point."""
    assert len(curve) == len(reference)
    return max(abs(p["loss"] - q["loss"]) / abs(q["loss"]) for p, q in zip(curve, reference))


def _run(tiny_world, ckpt, out, protocol="linear", **settings):
    config = cell_config(tiny_world, _cell(protocol), checkpoint=ckpt, steps=6, batch_size=2, eval_every=3,
                         **settings)
    return run_cell(config, out, progress=False)


def test_k_heads_in_one_pass_equal_k_separate_cells(tiny_world, tiny_depth_ckpt, tmp_path):
    swept = _run(tiny_world, tiny_depth_ckpt, tmp_path / "sweep", sweep={"linear": {"lr": LRS}})
    separate = [_run(tiny_world, tiny_depth_ckpt, tmp_path / f"lr{lr}", optim={"lr": lr}) for lr in LRS]
    sweep = swept["sweep"]
    assert sweep["trained"].startswith("in one pass") and [c["optim"] for c in sweep["candidates"]] == \
        [{"lr": lr} for lr in LRS]
    for k, (candidate, alone) in enumerate(zip(sweep["candidates"], separate)):
        assert [p["miou"] for p in candidate["curve"]] == pytest.approx([p["miou"] for p in alone["curve"]], abs=1e-6)
        # The heads train in one batched pass, their float sums in another order than K cells
        # apart: the losses agree to float32 precision, not to the bit (7.5e-7 apart at 2 threads,
        # which an absolute 1e-6 on a loss of 2.8 failed).
        assert_below(_relative_gap(candidate["curve"], alone["curve"]), 1e-4,
                     f"candidate {k}: loss curve, one pass vs a cell apart (largest relative gap)")
    final = sorted((c["curve"][-1]["miou"] for c in separate), reverse=True)
    # The selection is decided by a clear gap, not by float noise between the two ways of training.
    assert_above(final[0], final[1], "best candidate's final validation mIoU vs the runner-up's")
    best = max(range(len(LRS)), key=lambda k: separate[k]["curve"][-1]["miou"])
    assert sweep["selected"] == best and swept["optimizer"]["lr"] == LRS[best]
    for key in ("miou", "pixel_acc", "mean_class_acc"):
        assert swept["metrics"][key] == pytest.approx(separate[best]["metrics"][key], abs=1e-6)
    assert swept["curve"] == sweep["candidates"][best]["curve"]
    # The encoder ran once per view for all heads: no more encodings than a single cell.
    assert swept["feature_cache"]["computed"] == separate[best]["feature_cache"]["computed"]
    assert "best" not in swept and all(p["split"] == "validation" for p in swept["curve"])


def test_candidates_of_a_full_cell_train_one_after_another(tiny_world, tiny_depth_ckpt, tmp_path):
    swept = _run(tiny_world, tiny_depth_ckpt, tmp_path / "sweep", protocol="full",
                 sweep={"full": {"lr": [1e-4, 1e-3]}})
    assert swept["sweep"]["trained"] == "one after another" and swept["status"] == "ok"
    best = swept["sweep"]["selected"]
    alone = _run(tiny_world, tiny_depth_ckpt, tmp_path / "alone", protocol="full", optim={"lr": [1e-4, 1e-3][best]})
    assert swept["metrics"]["miou"] == pytest.approx(alone["metrics"]["miou"], abs=1e-6)
    assert swept["encoder_sha256_after"] == alone["encoder_sha256_after"]


@pytest.mark.parametrize("protocol", ["linear", "frozen"])  # the linear heads' bank, and heads one by one
def test_a_diverged_candidate_is_excluded_and_all_diverged_is_diverged(tiny_world, tiny_depth_ckpt, tmp_path,
                                                                      protocol):
    # A learning rate of 1e36 overflows the head's weights within a few steps: a real divergence.
    lrs = [1e-3, 1e36, 1e-1]
    swept = _run(tiny_world, tiny_depth_ckpt, tmp_path / "one", protocol=protocol, sweep={protocol: {"lr": lrs}})
    statuses = [c["status"] for c in swept["sweep"]["candidates"]]
    assert statuses == ["ok", "diverged", "ok"] and swept["status"] == "ok" and swept["sweep"]["selected"] != 1
    assert swept["sweep"]["candidates"][1]["validation_miou"] is None
    assert "loss became" in swept["sweep"]["candidates"][1]["error"]
    # The diverged head leaves the others as they would have trained without it (to float rounding:
    # a bank's products of K and of one head sum in different orders).
    alone = _run(tiny_world, tiny_depth_ckpt, tmp_path / "alone", protocol=protocol, optim={"lr": lrs[2]})
    assert [p["loss"] for p in swept["sweep"]["candidates"][2]["curve"]] == \
        pytest.approx([p["loss"] for p in alone["curve"]], rel=1e-6, abs=1e-6)

    dead = _run(tiny_world, tiny_depth_ckpt, tmp_path / "all", protocol=protocol,
                sweep={protocol: {"lr": [1e35, 1e36]}})
    assert dead["status"] == "diverged" and dead["metrics"] is None and dead["sweep"]["selected"] is None
    assert "candidate 0: loss became" in dead["error"] and "candidate 1: loss became" in dead["error"]


def test_selection_rule():
    ok = lambda m: LoopResult(curve=[{"miou": 0.1}, {"miou": m}])  # noqa: E731
    assert select_candidate([ok(0.3), ok(0.5), ok(0.5)]) == 1  # the final point decides; ties: the first
    assert select_candidate([LoopResult(status="diverged"), ok(0.2)]) == 1
    assert select_candidate([LoopResult(status="diverged")]) is None


def test_a_killed_sweep_resumes_with_every_head(tiny_world, tiny_depth_ckpt, tmp_path, monkeypatch):
    import transfer.cell_state as cell_state

    plain = _run(tiny_world, tiny_depth_ckpt, tmp_path / "plain", sweep={"linear": {"lr": LRS}}, state_every=2)
    original = cell_state.save_cell_state

    def save_then_die(*args):
        original(*args)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(train_mod, "save_cell_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_world, tiny_depth_ckpt, tmp_path / "killed", sweep={"linear": {"lr": LRS}}, state_every=2)
    monkeypatch.setattr(train_mod, "save_cell_state", original)
    resumed = _run(tiny_world, tiny_depth_ckpt, tmp_path / "killed", sweep={"linear": {"lr": LRS}}, state_every=2)
    assert resumed["timings"]["resumed_from_step"] == 2
    assert resumed["metrics"] == plain["metrics"] and resumed["sweep"]["selected"] == plain["sweep"]["selected"]
    for k, (a, b) in enumerate(zip(resumed["sweep"]["candidates"], plain["sweep"]["candidates"], strict=True)):
        assert [p["miou"] for p in a["curve"]] == [p["miou"] for p in b["curve"]]
        # The resumed cell re-encodes its cached views inside other batches: float noise only.
        assert_below(_relative_gap(a["curve"], b["curve"]), 1e-4,
                     f"candidate {k}: loss curve, resumed vs uninterrupted (largest relative gap)")


def test_sweeps_from_the_cli_and_a_manifest(tiny_world, tiny_depth_ckpt, tmp_path, capsys):
    assert main(["transfer", "--checkpoint", str(tiny_depth_ckpt), "--root", str(tiny_world), "--protocol", "linear",
                 "--train-size", "4", "--steps", "2", "--batch-size", "2", "--sweep-lr", "1e-3,1e-2",
                 "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    record = json.loads((tmp_path / "c" / "record.json").read_text())
    assert [c["optim"] for c in record["sweep"]["candidates"]] == [{"lr": 1e-3}, {"lr": 1e-2}]
    assert main(["transfer", "--checkpoint", str(tiny_depth_ckpt), "--root", str(tiny_world), "--protocol", "linear",
                 "--sweep-lr", "fast", "--out", str(tmp_path / "d"), "--no-progress"]) == 2
    assert "--sweep-lr 'fast': expected comma-separated numbers" in capsys.readouterr().err


@pytest.mark.parametrize("sweep, message", [
    ("{linear: {lr: [0.001, 0.01]}}", None),
    ("{linear: {batch_size: [2, 4]}}", "'batch_size' cannot be swept"),
    ("{linear: {optimizer: [sgd, adamw]}}", "optimizer.0.: Input should be a valid number"),
    ("{thawed: {lr: [0.1]}}", "unknown protocol 'thawed'"),
    ("{linear: {lr: [-1]}}", "greater than 0"),
    ("{linear: {lr: []}}", "lr lists no value"),
])
def test_manifest_sweeps_are_validated(tmp_path, sweep, message):
    from bench.core.errors import UserError
    from bench.study.manifest import load_manifest

    path = tmp_path / "m.yaml"
    path.write_text(f"name: t\nbackbones: [{{name: a, arch: resnet10t}}]\ndatasets: [{{name: synth}}]\n"
                    f"transfer: {{sweep: {sweep}}}\n")
    if message is None:
        assert load_manifest(path).transfer.sweep == {"linear": {"lr": [0.001, 0.01]}}
    else:
        with pytest.raises(UserError, match=message):
            load_manifest(path)
