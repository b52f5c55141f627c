"""End to end: `bench run` on a tiny manifest, re-runs that skip, and `kill -9` in the middle."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from bench.cli import main
from bench.core.records import read_json
from tests.conftest import copy_results, tiny_manifest

COLUMNS = ["backbone", "method", "arch", "dataset", "protocol", "decoder", "train_size", "n_seeds",
           "miou_mean", "miou_std", "pixel_acc_mean", "pixel_acc_std"]


def _records(results: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in results.glob("runs/*/record.json")}


def test_end_to_end_and_rerun_skips_everything(finished_matrix, tmp_path, capsys):
    printed = (finished_matrix.parent / "stdout.txt").read_text()
    assert "leaderboard.csv" in printed and "| backbone" in printed
    results = finished_matrix

    records = _records(results)
    assert len(records) == 9 and all(r["status"] == "ok" for r in records.values())
    board = pd.read_csv(results / "leaderboard.csv")
    assert list(board.columns[: len(COLUMNS)]) == COLUMNS or set(COLUMNS) <= set(board.columns)
    assert len(board) == 9 and set(board["n_seeds"]) == {1}
    # The leaderboard is derived from the records: recompute one mean by hand.
    row = board[(board.backbone == "depth") & (board.protocol == "full")].iloc[0]
    rec = records["depth__synth__full__monodepth2__n4__s0"]
    assert abs(row["miou_mean"] - 100 * rec["metrics"]["miou"]) < 1e-3
    assert (results / "leaderboard.md").read_text().startswith("# Leaderboard")
    assert (results / "manifest.resolved.json").is_file()
    # What a finished job leaves: no encoder weights (keep_weights is off), no state or cache spill,
    # and the CKA heatmap of the pre-trained backbone from the matrix its full cell stored.
    assert not [p for p in results.rglob("*") if p.name in ("final.safetensors", "state.pt", "image_cache",
                                                             "feature_cache", "last_good.safetensors")]
    assert sorted(p.parent.name for p in results.glob("runs/*/cka.json")) == sorted(
        name for name, r in records.items() if r["cell"]["protocol"] == "full" and r["checkpoint"])
    assert (results / "cka" / "depth__synth__full__monodepth2__n4__s0.png").is_file()
    for r in records.values():
        frozen = r["cell"]["protocol"] in ("frozen", "linear")
        assert (r["encoder_sha256_before"] == r["encoder_sha256_after"]) == frozen
        assert (results / "runs" / Path(r["cell"]["backbone"] + "__synth__" + r["cell"]["protocol"] + "__" +
                                        r["cell"]["decoder"] + "__n4__s0") / "log.txt").is_file()

    # The rest changes the folder: a copy of it (a moved results folder keeps every fingerprint).
    results = copy_results(finished_matrix, tmp_path)
    manifest = tmp_path / "tiny.yaml"
    stamps = {p: p.stat().st_mtime_ns for p in results.glob("runs/*/record.json")}
    assert main(["run", str(manifest), "--no-progress", "--no-plots"]) == 0
    assert "0 to run" in capsys.readouterr().err
    assert stamps == {p: p.stat().st_mtime_ns for p in results.glob("runs/*/record.json")}

    # A broken manifest is refused with one line and touches nothing already written.
    broken = manifest.with_name("broken.yaml")
    broken.write_text(manifest.read_text().replace("eval_every: 3", "eval_every: often"))
    assert main(["run", str(broken), "--no-progress"]) == 2
    assert "transfer.eval_every" in capsys.readouterr().err
    assert stamps == {p: p.stat().st_mtime_ns for p in results.glob("runs/*/record.json")}

    # A changed transfer setting re-runs exactly the cells it touches: an optimiser layer of the
    # linear protocol, its 3 cells (the cheapest to re-run), and no other.
    text = manifest.read_text()
    assert "\n  eval_every: 3\n" in text
    manifest.write_text(text.replace("\n  eval_every: 3\n", "\n  eval_every: 3\n  optimizer: {linear: {lr: 0.0123}}\n"))
    assert main(["run", str(manifest), "--no-progress", "--no-plots"]) == 0
    assert "6 up to date, 3 to run" in capsys.readouterr().err
    rerun = {p.parent.name for p, t in stamps.items() if p.stat().st_mtime_ns != t}
    assert rerun == {name for name, r in records.items() if r["cell"]["protocol"] == "linear"}


def test_aggregate_cli_rebuilds_the_reports_from_records_and_skips_a_corrupt_one(finished_matrix, tmp_path, capsys):
    results = copy_results(finished_matrix, tmp_path)
    for stale in ("leaderboard.csv", "report.html"):
        (results / stale).unlink()
    shutil.rmtree(results / "plots")
    # A corrupt record is ignored by the aggregator rather than crashing it.
    (results / "runs" / "junk").mkdir()
    (results / "runs" / "junk" / "record.json").write_text("{not json")
    assert main(["aggregate", str(results), "--no-plots"]) == 0
    board = pd.read_csv(results / "leaderboard.csv")
    assert len(board) == 9 and set(board["n_seeds"]) == {1}
    assert board.equals(pd.read_csv(finished_matrix / "leaderboard.csv"))  # the same records, the same board
    # --no-plots: the leaderboards, tables and report, without a figure
    assert (results / "report.html").is_file() and list((results / "tables").iterdir())
    assert not (results / "plots").exists() and "plots:" not in capsys.readouterr().out
    assert main(["aggregate", str(tmp_path / "nowhere")]) == 2


def test_kill_9_then_rerun_leaves_one_ok_record_per_cell(tmp_path):
    # One pre-training (a killed pre-training's resume is test_pretrain's), 6 cells; the figures are
    # not what this checks.
    manifest = tiny_manifest(tmp_path, name="killme", steps=12, pretrain_steps=12, classification=False)
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "bench.cli", "run", str(manifest), "--no-progress", "--no-plots"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(results.glob("runs/*/record.json"))) < 2:
        assert proc.poll() is None, "run finished before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.parent.name: read_json(p) for p in results.glob("runs/*/record.json")}
    assert before and all(r is not None for r in before.values())  # nothing torn
    assert len(before) < 6

    # The re-run, in this process (only the killed run needs one of its own).
    assert main(["run", str(manifest), "--no-progress", "--no-plots"]) == 0
    after = _records(results)
    assert len(after) == 6 and all(r["status"] == "ok" for r in after.values())
    for name, rec in before.items():  # finished cells were not run again
        assert after[name]["finished_at"] == rec["finished_at"]
    assert not [p for p in results.rglob("*.tmp")]


def test_a_rerun_removes_what_a_killed_run_left_half_written(finished_matrix, tmp_path, capsys):
    """The kill -9 test above catches this only when the kill lands inside an atomic write; here
    the debris is planted: a cell and a pre-training killed mid-write, and a world killed mid-render."""
    results = copy_results(finished_matrix, tmp_path)
    manifest = tmp_path / "tiny.yaml"
    cell = results / "runs" / "random__synth__linear__linear__n4__s0"
    (cell / "record.json").unlink()  # killed before its record landed: the cell runs again
    cell_debris = [cell / ".record.json.dead01.tmp", cell / "predictions" / ".eval00000_pred.png.dead02.tmp"]
    explain_temp = cell / "explain" / ".layer4_eval00000.png.live03.tmp"  # bench explain's, which claims nothing
    pretrain = results / "pretrain" / "depth"
    (pretrain / "checkpoint.safetensors").unlink()
    pretrain_debris = [pretrain / ".checkpoint.safetensors.dead04.tmp"]
    world = next(results.glob("data/synth-*"))
    shutil.rmtree(world)
    world_debris = world.parent / f".{world.name}.tmp-dead05"
    (world_debris / "seq_000").mkdir(parents=True)
    explain_temp.parent.mkdir()
    for path in [*cell_debris, *pretrain_debris, explain_temp]:
        path.write_bytes(b"half")
    assert main(["run", str(manifest), "--workers", "1", "--no-progress", "--no-plots"]) == 0
    assert not any(p.exists() for p in [*cell_debris, *pretrain_debris, world_debris])
    assert explain_temp.exists()
    assert (world / "meta.json").is_file() and read_json(cell / "record.json")["status"] == "ok"
    assert "removed 2 temp file(s) a killed run left: .record.json.dead01.tmp, predictions/" in (cell / "log.txt").read_text()
    assert "removed 1 temp file(s)" in (pretrain / "log.txt").read_text()
    capsys.readouterr()


def test_a_diverging_pretraining_blocks_only_its_own_cells(tmp_path, capsys, monkeypatch):
    import torch

    import pretrain.methods.depth_supervised as ds

    monkeypatch.setattr(ds.DepthSupervised, "loss", lambda self, gen, bs: (torch.tensor(float("nan")), {}))
    manifest = tiny_manifest(tmp_path, protocols="[linear]", classification=False)
    results = tmp_path / "results"
    assert main(["run", str(manifest), "--workers", "1", "--no-progress", "--no-plots"]) == 1
    err = capsys.readouterr().err
    assert "pre-training depth failed:" in err and "consecutive non-finite steps" in err
    assert json.loads((results / "pretrain" / "depth" / "diverged.json").read_text())["status"] == "diverged"
    assert not (results / "pretrain" / "depth" / "checkpoint.safetensors").exists()
    records = _records(results).values()
    assert {r["cell"]["backbone"] for r in records if r["status"] == "ok"} == {"random"}
    # The blocked cells say why instead of leaving a silent gap; they run once the pre-training works.
    skipped = [r for r in records if r["cell"]["backbone"] == "depth"]
    assert skipped and all(r["status"] == "skipped" and r["error"].startswith("pre-training depth failed:")
                           for r in skipped)
    assert "retrying" not in err  # a divergence is a result, not a flaky failure


def test_cells_run_costliest_first_so_the_cheap_ones_fill_the_end_of_the_stage():
    from bench.executors import Job
    from bench.study.runner import longest_first

    def job(name, protocol, candidates=1):
        sweep = [{"lr": 10.0 ** -k} for k in range(candidates)] if candidates > 1 else None
        return Job(len, {"config": {"cell": {"protocol": protocol}, **({"sweep": sweep} if sweep else {})}},
                   name=name, out_dir=Path(name))

    jobs = [job("a", "linear"), job("b", "frozen"), job("c", "full"), job("d", "frozen", 3), job("e", "linear"),
            job("f", "full")]
    assert [j.name for j in longest_first(jobs)] == ["c", "f", "d", "b", "a", "e"]
