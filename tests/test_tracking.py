"""Experiment tracking (bench/tracking): a tiny matrix with TensorBoard and MLflow on, read back
through each library's own reader (TensorBoard's EventAccumulator, MLflow's MlflowClient on the
store it wrote), then the ways a sink may fail without failing the run: a dead server, a server
that never answers, a missing library.

The read-back tests need the `track` extra and skip without it unless BENCH_REQUIRE_TRACK=1
(CI), which makes a missing extra a failure. The missing-library test needs nothing.
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.cli import main
from tests.conftest import tiny_manifest

try:
    import mlflow  # noqa: F401
    import sqlalchemy  # noqa: F401 -- MLflow's SQLite store
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    WHY_NOT = None
except ImportError as exc:
    WHY_NOT = f"{exc.name or exc} is not installed (the `track` extra)"
    if os.environ.get("BENCH_REQUIRE_TRACK") == "1":
        raise ImportError(f'BENCH_REQUIRE_TRACK=1 but {WHY_NOT}: pip install -e ".[track]"') from exc

needs_track = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
MATRIX = "tracked"


def _with_tracking(manifest: Path, tracking: str) -> Path:
    """The manifest with a `tracking:` section (YAML flow mapping) appended, as a sibling file."""
    path = manifest.with_name(f"{manifest.stem}-{abs(hash(tracking)) % 10**8}.yaml")
    path.write_text(manifest.read_text() + f"tracking: {tracking}\n")
    return path


def _records(results: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in results.glob("runs/*/record.json")}


def _history(results: Path, backbone: str) -> list[dict]:
    with open(results / "pretrain" / backbone / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens once it is closed


@pytest.fixture(autouse=True)
def _mlflow_env(monkeypatch):
    """The sink sets MLflow's HTTP retry/timeout variables when unset; each test starts unset."""
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A tiny matrix (two resnet10t backbones, one of them pre-trained, linear cells) run once
    with both sinks on their defaults: RESULTS/tensorboard and sqlite:///RESULTS/mlflow.db."""
    if WHY_NOT is not None:
        pytest.skip(WHY_NOT)
    tmp = tmp_path_factory.mktemp("tracked")
    # one pre-training and two cells are enough
    manifest = tiny_manifest(tmp, name=MATRIX, protocols="[linear]", steps=4, pretrain_steps=4, classification=False)
    plain, manifest = manifest, _with_tracking(manifest, "{tensorboard: {}, mlflow: {}}")
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_TRACKING_URI"):
        os.environ.pop(name, None)
    t0 = time.perf_counter()
    assert main(["run", str(manifest), "--no-progress", "--no-plots"]) == 0
    return {"manifest": manifest, "plain": plain, "results": tmp / "results", "wall_s": time.perf_counter() - t0}


@needs_track
def test_tensorboard_event_files_hold_the_records_curves(tracked):
    results = tracked["results"]
    records = _records(results)
    assert len(records) == 2
    root = results / "tensorboard" / MATRIX
    for cell_id, record in records.items():
        acc = EventAccumulator(str(root / cell_id))
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        assert {"validation/miou", "validation/loss", "evaluation/miou", "evaluation/pixel_acc"} <= tags
        curve = record["curve"]
        assert curve, "a finished cell has a validation curve"
        for key in ("miou", "loss", "pixel_acc"):
            events = acc.Scalars(f"validation/{key}")
            assert [e.step for e in events] == [p["step"] for p in curve]
            assert [e.value for e in events] == pytest.approx([p[key] for p in curve], rel=1e-6)
        (final,) = acc.Scalars("evaluation/miou")
        assert final.value == pytest.approx(record["metrics"]["miou"], rel=1e-6)
        assert final.step == record["timings"]["steps_done"]
        for name, iou in record["metrics"]["per_class_iou"].items():
            if iou is not None:
                assert acc.Scalars(f"evaluation/per_class_iou/{name}")[0].value == pytest.approx(iou, rel=1e-6)
        assert "config/text_summary" in acc.Tags()["tensors"]  # the resolved config, as text
    acc = EventAccumulator(str(root / "pretrain" / "depth"))
    acc.Reload()
    rows = _history(results, "depth")
    for column in ("loss", "lr"):
        events = acc.Scalars(f"train/{column}")
        assert [e.step for e in events] == [int(r["step"]) for r in rows]
        assert [e.value for e in events] == pytest.approx([float(r[column]) for r in rows], rel=1e-6)
    assert [p.name for p in (root / "pretrain").iterdir()] == ["depth"]


@needs_track
def test_mlflow_store_has_one_run_per_job_with_config_curves_and_record(tracked, tmp_path):
    results = tracked["results"]
    records = _records(results)
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(MATRIX)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert len(runs) == len(by_name) == 3
    assert set(by_name) == {*records, "pretrain/depth"}
    assert all(r.info.status == "FINISHED" for r in runs)
    for cell_id, record in records.items():
        run = by_name[cell_id]
        params = run.data.params
        assert params["fingerprint"] == record["fingerprint"]
        assert params["steps"] == str(record["config"]["steps"])
        assert params["cell.protocol"] == "linear" and params["cell.backbone"] == record["cell"]["backbone"]
        history = client.get_metric_history(run.info.run_id, "validation/miou")
        assert [(m.step, m.value) for m in history] == [(p["step"], pytest.approx(p["miou"])) for p in record["curve"]]
        assert run.data.metrics["evaluation/miou"] == pytest.approx(record["metrics"]["miou"])
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["record.json"]
        local = client.download_artifacts(run.info.run_id, "record.json", str(tmp_path))
        assert json.loads(Path(local).read_text()) == record
    depth = by_name["pretrain/depth"]
    assert depth.data.params["method"] == "depth_supervised" and depth.data.params["steps"] == "4"
    history = client.get_metric_history(depth.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(int(r["step"]), pytest.approx(float(r["loss"])))
                                                    for r in _history(results, "depth")]
    assert {a.path for a in client.list_artifacts(depth.info.run_id)} == {"summary.json", "history.csv"}
    # The artifacts sit beside the database, not in whatever folder the run was started from.
    assert (results / "mlartifacts" / MATRIX).is_dir()


@needs_track
def test_a_rerun_logs_nothing_twice_and_a_changed_record_once(tracked, capsys):
    results, manifest = tracked["results"], tracked["manifest"]
    assert main(["run", str(manifest), "--no-progress", "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "0 to run" in err and not re.search(r"^tracked \d+ job record", err, re.M)  # nothing new to log
    # Tracking is in no fingerprint: the same matrix without it finds every job up to date.
    assert main(["run", str(tracked["plain"]), "--no-progress", "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "0 to run" in err and "pre-trained" not in err
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name(MATRIX).experiment_id
    assert len(client.search_runs([experiment_id])) == 3

    # A record that changed on disk (re-run elsewhere) is logged again; its TensorBoard dir shows
    # only the new one.
    cell_id = sorted(_records(results))[0]
    path = results / "runs" / cell_id / "record.json"
    record = json.loads(path.read_text())
    record["curve"] = record["curve"][:1]
    path.write_text(json.dumps(record))
    assert main(["run", str(manifest), "--no-progress", "--no-plots"]) == 0
    assert "tracked 2 job records in" in capsys.readouterr().err  # one job, two sinks
    runs = client.search_runs([experiment_id], filter_string=f"attributes.run_name = '{cell_id}'")
    assert len(runs) == 2 and len(client.search_runs([experiment_id])) == 4
    acc = EventAccumulator(str(results / "tensorboard" / MATRIX / cell_id))
    acc.Reload()
    assert len(acc.Scalars("validation/miou")) == 1


@needs_track
def test_a_dead_server_is_one_warning_and_the_run_finishes(tracked, capsys):
    """Nobody on the port: the first request is refused, the sink turns off with one line,
    the leaderboard is written, and a later run with a live store logs every job (catch-up)."""
    results = tracked["results"]
    dead = f"http://127.0.0.1:{_closed_port()}"
    manifest = _with_tracking(tracked["manifest"], f"{{mlflow: {{tracking_uri: '{dead}'}}}}")
    (results / "leaderboard.csv").unlink()
    t0 = time.perf_counter()
    assert main(["run", str(manifest), "--no-progress", "--no-plots"]) == 0
    wall = time.perf_counter() - t0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("tracking:")]
    assert len(warnings) == 1 and "MLflow is off" in warnings[0] and "127.0.0.1" in warnings[0], err
    assert (results / "leaderboard.csv").is_file()
    # A guard against a hang, not a timing: an up-to-date re-run takes 1-3 s (MLflow's own
    # timeout and retries against a dead server would take minutes).
    assert wall < 30, f"a dead server held the run: {wall:.1f}s"
    assert all(dead not in (results / "runs" / c / "tracked.json").read_text() for c in _records(results))

    # Later, a sink that works: every finished job is logged, though none ran (TensorBoard here:
    # a fresh MLflow store costs seconds of table creation, and the catch-up is the same code).
    later = results / "tensorboard-later"
    assert main(["run", str(_with_tracking(tracked["manifest"], f"{{tensorboard: {{dir: '{later}'}}}}")),
                 "--no-progress", "--no-plots"]) == 0
    assert "0 to run" in capsys.readouterr().err
    assert {p.parent.relative_to(later / MATRIX).as_posix() for p in later.rglob("events.out.tfevents.*")} == \
        {*_records(results), "pretrain/depth"}


@needs_track
def test_a_server_that_never_answers_is_cut_off_at_timeout_s(tracked, capsys):
    """A port that accepts connections and never replies: MLflow's own request timeout would be
    minutes with its retries; the sink's time limit (here 2 s) ends it."""
    from bench.study.manifest import TrackingSpec
    from bench.tracking import Tracker

    results = tracked["results"]
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes the handshakes; nobody reads or answers
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        said = []
        tracker = Tracker(TrackingSpec(mlflow={"tracking_uri": uri}, timeout_s=2), results, MATRIX, said.append)
        t0 = time.perf_counter()
        tracker.catch_up()
        wall = time.perf_counter() - t0
    assert len(said) == 1 and "took over 2s" in said[0], said  # the time limit fired
    # and cut the wait off near its 2 s: MLflow's own timeout and retries would take minutes
    # (a guard against a hang, 15x the limit, not a timing)
    assert wall < 30, f"{wall:.1f}s"


def test_a_missing_library_is_one_warning_per_sink_naming_the_extra(tmp_path, capsys, monkeypatch):
    """Neither library importable (as without the extra): the run finishes, each sink says once
    which extra to install, and no job folder records a sink as logged."""
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    results = tmp_path / "results"
    manifest = tmp_path / "untracked.yaml"
    manifest.write_text(textwrap.dedent(f"""
        name: untracked
        out: {results}
        data:
          synth: {{sequences: 3, frames: 4, height: 48, width: 144, seed: 0, crops_per_class: 6}}
        backbones:
          - {{name: random, arch: resnet10t}}
        datasets:
          - name: synth
        transfer: {{protocols: [linear], train_sizes: [4], steps: 4, batch_size: 2, eval_every: 2}}
        tracking: {{tensorboard: {{}}, mlflow: {{}}}}
        """))
    assert main(["run", str(manifest), "--no-progress", "--no-plots"]) == 0
    assert (results / "leaderboard.csv").is_file() and len(_records(results)) == 1
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tracking:")]
    assert len(warnings) == 2, warnings
    assert all('pip install -e ".[track]"' in w for w in warnings)
    assert any("TensorBoard" in w and "torch.utils.tensorboard" in w for w in warnings)
    assert any("MLflow" in w and "mlflow" in w for w in warnings)
    assert not list(results.rglob("tracked.json")) and not (results / "tensorboard").exists()


def test_a_record_the_sinks_cannot_read_is_a_warning_not_a_crash(tmp_path):
    """A finished record without the fields a sink reads (an older schema, a hand edit): one
    warning naming the folder, nothing raised."""
    from bench.study.manifest import TrackingSpec
    from bench.tracking import Tracker

    odd = tmp_path / "runs" / "odd"
    odd.mkdir(parents=True)
    (odd / "record.json").write_text(json.dumps({"status": "ok", "curve": [{"step": 1, "miou": 0.5}]}))
    said = []
    Tracker(TrackingSpec(tensorboard={}), tmp_path, "m", said.append).catch_up()
    assert len(said) == 1 and str(odd) in said[0] and "not logged" in said[0], said
