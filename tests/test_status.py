"""`bench status`, `skipped` records, bounded retries and the smoke manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.study.manifest import load_manifest
from bench.study.matrix import expand
from bench.core.results_folder import RUNNING_MARKER as MARKER
from bench.study.status import format_status, matrix_status
from tests.conftest import tiny_manifest


@pytest.fixture
def finished(finished_matrix):
    """The session's finished matrix (read only: tests that change it copy it first)."""
    return finished_matrix


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_status_classifies_every_cell(finished, tmp_path, capsys):
    import shutil

    results = tmp_path / "r"
    shutil.copytree(finished, results)
    runs = sorted(p for p in (results / "runs").iterdir())
    assert len(runs) == 9
    # One cell running here, one whose process died, one never started.
    (runs[0] / "record.json").unlink()
    (runs[0] / MARKER).write_text(json.dumps({"host": os.uname().nodename, "pid": os.getpid()}))
    (runs[1] / "record.json").unlink()
    (runs[1] / MARKER).write_text(json.dumps({"host": os.uname().nodename, "pid": _dead_pid()}))
    shutil.rmtree(runs[2])
    summary = matrix_status(results)
    assert summary["counts"] == {"ok": 6, "running": 1, "interrupted": 1, "pending": 1}
    assert main(["status", str(results)]) == 0
    out = capsys.readouterr().out
    assert "interrupted" in out and "bench run resumes it" in out


def test_status_counts_done_and_reads_failed_reasons(finished, capsys):
    assert matrix_status(finished)["counts"] == {"ok": 9}
    assert main(["status", str(finished), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 9


def test_status_of_a_folder_without_a_matrix_is_one_line(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no manifest.resolved.json" in err and "\n" not in err


def test_a_failing_cell_is_retried_then_recorded_with_its_traceback(tmp_path, monkeypatch):
    import transfer.api as api

    original, calls = api.run_cell, []

    def flaky(config, out_dir, **kw):
        calls.append(config["cell"]["backbone"])
        if calls.count(config["cell"]["backbone"]) == 1 and config["cell"]["backbone"] == "random":
            raise OSError("NFS hiccup")
        return original(config, out_dir, **kw)

    monkeypatch.setattr(api, "run_cell", flaky)
    manifest = tiny_manifest(tmp_path, protocols="[linear]", steps=2, classification=False)
    assert main(["run", str(manifest), "--no-progress", "--no-plots"]) == 0  # default retries: 1
    assert calls.count("random") == 2

    calls.clear()
    text = manifest.read_text().replace("transfer:", "executor: {retries: 0}\ntransfer:")
    manifest.write_text(text)
    for p in (tmp_path / "results" / "runs").glob("random__*/record.json"):
        p.unlink()
    assert main(["run", str(manifest), "--no-progress", "--no-plots"]) == 1
    record = json.loads(next((tmp_path / "results" / "runs").glob("random__*/record.json")).read_text())
    assert record["status"] == "failed" and record["error"] == "OSError: NFS hiccup"
    log = next((tmp_path / "results" / "runs").glob("random__*/log.txt")).read_text()
    assert "Traceback" in log and "NFS hiccup" in log


def test_the_smoke_manifest_is_the_promised_matrix():
    m = load_manifest(Path(__file__).parent.parent / "configs" / "smoke.yaml")
    cells = expand(m, {})
    assert len(m.backbones) == 2 and len(m.datasets) == 1 and len(m.transfer.protocols) == 2
    assert len(m.transfer.seeds) == 2 and len(cells) == 8


def test_status_reports_pretrainings_and_the_metrics_of_finished_cells(finished, capsys):
    summary = matrix_status(finished)
    assert [(p["name"], p["status"]) for p in summary["pretrainings"]] == [("depth", "ok"), ("cls", "ok")]
    losses = {p["name"]: json.loads((finished / "pretrain" / p["name"] / "summary.json").read_text())["final_loss"]
              for p in summary["pretrainings"]}
    assert {p["name"]: p["final_loss"] for p in summary["pretrainings"]} == losses
    for c in summary["cells"]:
        record = json.loads((finished / "runs" / c["cell"] / "record.json").read_text())
        assert c["miou"] == record["metrics"]["miou"]
    assert sorted(summary["backbones"]) == ["cls", "depth", "random"]
    assert summary["estimate"]["total_s"] == 0
    assert main(["status", str(finished), "--all"]) == 0
    out = capsys.readouterr().out
    assert "pre-trainings: 2 (2 ok)" in out and "final loss" in out and "mean mIoU per backbone" in out
    assert "estimated time to finish: nothing left" in out


def test_status_estimates_the_time_to_finish_from_finished_jobs(finished, tmp_path, capsys):
    import shutil

    results = tmp_path / "r"
    shutil.copytree(finished, results)
    runs = sorted((results / "runs").iterdir())
    walls = [json.loads((r / "record.json").read_text())["timings"]["wall_s"] for r in runs[1:]]
    (runs[0] / "record.json").unlink()  # one cell left
    (results / "pretrain" / "cls" / "checkpoint.safetensors").unlink()  # one pre-training left
    depth_wall = json.loads((results / "pretrain" / "depth" / "summary.json").read_text())["wall_s"]
    resolved = json.loads((results / "manifest.resolved.json").read_text())
    resolved["workers"] = 2
    (results / "manifest.resolved.json").write_text(json.dumps(resolved))
    summary = matrix_status(results)
    assert [p["status"] for p in summary["pretrainings"]] == ["ok", "pending"]
    est = summary["estimate"]
    assert est["cells_s"] == pytest.approx(sum(walls) / len(walls) / 2)
    assert est["pretrainings_s"] == pytest.approx(depth_wall / 2)
    assert est["total_s"] == pytest.approx(est["cells_s"] + est["pretrainings_s"])
    assert main(["status", str(results)]) == 0
    assert "estimated time to finish: " in capsys.readouterr().out

    for r in runs[1:]:  # nothing finished: no estimate, said so
        (r / "record.json").unlink()
    assert matrix_status(results)["estimate"]["cells_s"] is None
    assert "unknown" in format_status(matrix_status(results))
