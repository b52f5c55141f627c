"""`bench status`, `skipped` records, bounded retries and the smoke manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.manifest import load_manifest
from bench.matrix import expand
from bench.status import MARKER, matrix_status
from tests.conftest import tiny_manifest


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("status")
    manifest = tiny_manifest(tmp, protocols="[linear]", steps=2)
    assert main(["run", str(manifest), "--no-progress"]) == 0
    return tmp / "results"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_status_classifies_every_cell(finished, tmp_path, capsys):
    import shutil

    results = tmp_path / "r"
    shutil.copytree(finished, results)
    runs = sorted(p for p in (results / "runs").iterdir())
    assert len(runs) == 3
    # One cell running here, one whose process died, one never started.
    (runs[0] / "record.json").unlink()
    (runs[0] / MARKER).write_text(json.dumps({"host": os.uname().nodename, "pid": os.getpid()}))
    (runs[1] / "record.json").unlink()
    (runs[1] / MARKER).write_text(json.dumps({"host": os.uname().nodename, "pid": _dead_pid()}))
    shutil.rmtree(runs[2])
    summary = matrix_status(results)
    assert summary["counts"] == {"running": 1, "interrupted": 1, "pending": 1}
    assert main(["status", str(results)]) == 0
    out = capsys.readouterr().out
    assert "interrupted" in out and "bench run resumes it" in out


def test_status_counts_done_and_reads_failed_reasons(finished, capsys):
    assert matrix_status(finished)["counts"] == {"done": 3}
    assert main(["status", str(finished), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 3


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
    manifest = tiny_manifest(tmp_path, protocols="[linear]", steps=2)
    assert main(["run", str(manifest), "--no-progress"]) == 0  # default retries: 1
    assert calls.count("random") == 2

    calls.clear()
    text = manifest.read_text().replace("transfer:", "executor: {retries: 0}\ntransfer:")
    manifest.write_text(text)
    for p in (tmp_path / "results" / "runs").glob("random__*/record.json"):
        p.unlink()
    assert main(["run", str(manifest), "--no-progress"]) == 1
    record = json.loads(next((tmp_path / "results" / "runs").glob("random__*/record.json")).read_text())
    assert record["status"] == "failed" and record["error"] == "OSError: NFS hiccup"
    log = next((tmp_path / "results" / "runs").glob("random__*/log.txt")).read_text()
    assert "Traceback" in log and "NFS hiccup" in log


def test_the_smoke_manifest_is_the_promised_matrix():
    m = load_manifest(Path(__file__).parent.parent / "configs" / "smoke.yaml")
    cells = expand(m, {})
    assert len(m.backbones) == 2 and len(m.datasets) == 1 and len(m.transfer.protocols) == 2
    assert len(m.transfer.seeds) == 2 and len(cells) == 8
