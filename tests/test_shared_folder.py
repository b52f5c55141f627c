"""A results folder a team shares: concurrent drivers train each job once, a killed driver's
claims are taken over, stale and live claims of other hosts, and files readable under the umask."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd

from bench.core import results_folder as rf
from bench.cli import main
from bench.core.claims import read_claim

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _manifest(tmp_path: Path, *, name="shared", seeds="[0, 1]", pretrain=True, protocols="[linear, frozen]",
              steps=6) -> Path:
    depth = ("  - name: depth\n    arch: resnet10t\n"
             "    pretrain: {method: depth_supervised, steps: 6, batch_size: 2}\n") if pretrain else ""
    text = textwrap.dedent(f"""
    name: {name}
    out: {tmp_path / 'results'}
    data:
      synth: {{sequences: 3, frames: 4, height: 48, width: 144, seed: 0, crops_per_class: 2}}
    backbones:
      - name: random
        arch: resnet10t
    """) + depth + textwrap.dedent(f"""
    datasets:
      - name: synth
    transfer:
      protocols: {protocols}
      train_sizes: [4]
      seeds: {seeds}
      steps: {steps}
      batch_size: 2
      eval_every: 3
    """)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def _driver(manifest: Path, umask: int = 0o022, **kw) -> subprocess.Popen:
    # The figures are not what these drivers are for (their files' modes are the next test's).
    return subprocess.Popen([sys.executable, "-m", "bench.cli", "run", str(manifest), "--no-progress", "--no-plots"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.umask(umask), **kw)


def _records(results: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in results.glob("runs/*/record.json")}


def _trained(log: Path, marker: str) -> int:
    return log.read_text().count(marker) if log.is_file() else 0


def test_two_concurrent_drivers_train_every_job_once_and_end_with_a_complete_leaderboard(tmp_path):
    manifest = _manifest(tmp_path, protocols="[linear]")
    results = tmp_path / "results"
    t0 = time.perf_counter()
    drivers = [_driver(manifest, umask=0o002), _driver(manifest, umask=0o002)]
    outs = [d.communicate(timeout=300) for d in drivers]
    wall = time.perf_counter() - t0
    for d, (out, err) in zip(drivers, outs):
        assert d.returncode == 0, err[-3000:]

    records = _records(results)
    assert len(records) == 4 and all(r["status"] == "ok" for r in records.values())
    pids = {d.pid for d in drivers}
    ran = {pid: sorted(c for c, r in records.items() if r["ran_by"]["pid"] == pid) for pid in pids}
    assert sum(map(len, ran.values())) == 4  # every record written by one of the two drivers
    for cell in records:  # and each cell trained once: one "record written" in its log, no second start
        log = results / "runs" / cell / "log.txt"
        assert _trained(log, "record written") == 1 and _trained(log, " init ") == 1, log.read_text()
    assert _trained(results / "pretrain" / "depth" / "log.txt", "final loss") == 1
    assert not list(results.rglob(rf.CLAIM))  # every claim released

    board = pd.read_csv(results / "leaderboard.csv")  # the last one written has every cell
    assert len(board) == 2 and set(board["n_seeds"]) == {2}
    skipped = [err.count("claimed elsewhere") for _, err in outs]
    print(f"\nconcurrent drivers: wall {wall:.1f}s; cells run per driver "
          f"{[len(ran[d.pid]) for d in drivers]}; 'claimed elsewhere' lines {skipped}")

    # Shared with a group: under umask 002 every file the harness wrote is group-writable, none 0600.
    modes = {p.relative_to(results): p.stat().st_mode & 0o777 for p in results.rglob("*") if p.is_file()}
    assert modes and all(m == 0o664 for m in modes.values()), {str(p): oct(m) for p, m in modes.items() if m != 0o664}


def test_a_driver_killed_while_holding_claims_does_not_block_the_next_run(tmp_path):
    manifest = _manifest(tmp_path, name="killed", pretrain=False, protocols="[linear]", steps=60)
    results = tmp_path / "results"
    proc = _driver(manifest, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(results.glob(f"runs/*/{rf.CLAIM}")):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    left = list(results.glob(f"runs/*/{rf.CLAIM}"))
    assert left and read_claim(left[0].parent)["pid"] == proc.pid  # the dead driver's claim is still there

    # The next run, in this process (only the killed driver needs one of its own).
    assert main(["run", str(manifest), "--no-progress", "--no-plots"]) == 0
    records = _records(results)
    assert len(records) == 2 and all(r["status"] == "ok" for r in records.values())
    log = (left[0].parent / "log.txt").read_text()
    assert "took over the claim of" in log and f"pid {proc.pid}" in log and "is gone" in log
    assert not list(results.rglob(rf.CLAIM))


def _fake_claim(folder: Path, age_s: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    (folder / rf.CLAIM).write_text(json.dumps({
        "schema": 1, "host": "node17.cluster", "pid": 1234, "user": "colleague", "job": f"cell {folder.name}",
        "started": "2026-01-01T00:00:00+00:00", "heartbeat": "?", "heartbeat_unix": now - age_s, "token": "x"}))


def test_stale_claims_are_taken_over_and_live_ones_skipped(tmp_path, capsys):
    manifest = _manifest(tmp_path, name="claims", pretrain=False, protocols="[linear]")
    results = tmp_path / "results"
    stale = results / "runs" / "random__synth__linear__linear__n4__s0"
    live = results / "runs" / "random__synth__linear__linear__n4__s1"
    _fake_claim(stale, age_s=3600)  # another host, silent for an hour (default stale after 600 s)
    _fake_claim(live, age_s=5)  # another host, beating

    assert main(["run", str(manifest), "--no-progress", "--no-plots"]) == 0  # a job held elsewhere does not fail the run
    err = capsys.readouterr().err
    assert (stale / "record.json").is_file() and "took over the claim of colleague@node17.cluster pid 1234" in \
        (stale / "log.txt").read_text()
    assert not (live / "record.json").exists()
    assert f"cell {live.name}: claimed elsewhere by colleague@node17.cluster pid 1234" in err
    assert read_claim(live)["token"] == "x"  # left alone

    assert main(["status", str(results)]) == 0
    out = capsys.readouterr().out
    assert "claims: 1 held" in out and f"runs/{live.name}" in out and "colleague@node17.cluster pid 1234" in out
    assert "STALE" not in out
    _fake_claim(live, age_s=3600)
    assert main(["status", str(results), "--json"]) == 0
    (claim,) = json.loads(capsys.readouterr().out)["claims"]
    assert claim["stale"] and claim["heartbeat_age_s"] >= 3600


def _write_a_results_folder(root: Path) -> None:
    """A record, a checkpoint and the reports (figures included), as the harness writes them."""
    import torch

    from bench.report.aggregate import write_reports
    from bench.core.checkpoint import save_checkpoint
    from bench.core.records import write_json_atomic

    cell = {"backbone": "b", "method": "m", "arch": "resnet18", "dataset": "synth", "protocol": "frozen",
            "decoder": "monodepth2", "train_size": 4, "seed": 0}
    write_json_atomic(root / "runs" / "c" / "record.json", {
        "cell": cell, "status": "ok", "error": None, "init": {"requested": "auto", "effective": "encoder"},
        "config": {"init": "auto"}, "curve": [{"step": 2, "loss": 1.0, "miou": 0.4, "pixel_acc": 0.5}],
        "metrics": {"miou": 0.5, "pixel_acc": 0.6, "mean_class_acc": 0.5, "per_class_iou": {"road": 0.5}}})
    save_checkpoint(root / "pretrain" / "b" / "checkpoint.pt", {"w": torch.zeros(2)},
                    {"arch": "resnet18", "method": "m", "data": "d", "steps": 1, "normalization": "imagenet",
                     "seed": 0})
    write_reports(root)


def test_harness_writes_get_the_umask_mode(tmp_path):
    # In this process, its umask set for each folder and restored (one test process at a time
    # runs this test: a pytest-xdist worker runs its tests one after another).
    before = os.umask(0o022)
    try:
        for umask, mode in ((0o022, 0o644), (0o002, 0o664)):
            root = tmp_path / f"umask{umask:03o}"
            os.umask(umask)
            _write_a_results_folder(root)
            names = ["runs/c/record.json", "pretrain/b/checkpoint.pt", "leaderboard.csv", "leaderboard.md",
                     "report.html", "tables/miou_synth.md", "tables/miou_synth.tex"]
            names += [str(p.relative_to(root)) for p in (root / "plots").iterdir()]
            assert any(name.endswith(".png") for name in names) and any(name.endswith(".svg") for name in names)
            for name in names:
                assert (root / name).stat().st_mode & 0o777 == mode, (name, oct((root / name).stat().st_mode))
    finally:
        os.umask(before)
