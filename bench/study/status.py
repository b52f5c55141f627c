"""`bench status RESULTS_DIR`: where a matrix stands, from the results folder alone.

Each cell of the resolved manifest (plus any submitted backbone's records) is one of:

- `ok` / `diverged`: its record has that final status;
- `failed` / `skipped`: its record says so, with a one-line reason (skipped: its pre-training failed);
- `running`: no record yet, and a live process holds its `running.json` marker, or its Slurm
  job is queued or running;
- `interrupted`: a marker or an in-cell `state.pt` left by a process that is gone (`bench run`
  resumes it);
- `pending`: nothing yet.

Pre-trainings (`pretrain/NAME/`, a variant's `pretrain/NAME@LABEL/`) are `ok` (a checkpoint), `diverged`, `running` (a live
marker), `interrupted` (a dead marker or a `state.pt`) or `pending`. Finished cells show their
mIoU, and each backbone its mean over its finished cells.

The estimated time to finish is, for cells and pre-trainings separately, the mean wall time of
the finished ones (their records' `timings.wall_s`, `summary.json`'s `wall_s`) times the number
not finished (running ones counted whole), divided by the manifest's `workers`; it is unknown
until one of a kind has finished.

Records are the source of truth; a fingerprint check is `bench run`'s business (it needs the
checkpoints' hashes), so a record of an edited manifest still shows its old status here.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
from collections import Counter
from pathlib import Path

from bench.core import results_folder as rf
from bench.core.errors import UserError
from bench.core.records import read_json
from bench.core.results_folder import DIVERGED, FAILED, INTERRUPTED, OK, PENDING, RUNNING, SKIPPED
from bench.core.variants import cell_display

# The order `bench status` lists its counts in: the record's words, then those of jobs without one.
ORDER = [OK, DIVERGED, RUNNING, INTERRUPTED, FAILED, SKIPPED, PENDING]
FINISHED = (OK, DIVERGED, FAILED, SKIPPED)  # a cell with a record: nothing left to run (until re-run)


@contextlib.contextmanager
def running_marker(cell_dir: Path):
    """The running marker (host, pid, start) for as long as the cell runs in this process."""
    cell_dir.mkdir(parents=True, exist_ok=True)
    path = cell_dir / rf.RUNNING_MARKER
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _alive(marker: dict) -> bool:
    if marker.get("host") != socket.gethostname():
        return True  # another machine's process: trust the marker
    try:
        os.kill(int(marker["pid"]), 0)
    except (ProcessLookupError, ValueError, KeyError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def _slurm_state(cell_dir: Path) -> str | None:
    if not (cell_dir / rf.SLURM_JOB).is_file():
        return None
    try:
        from bench.executors.slurm import job_state
    except ImportError:
        return None
    return job_state(cell_dir)


def cell_status(cell_dir: Path) -> tuple[str, str | None]:
    record = read_json(cell_dir / rf.RECORD)
    if record is not None:
        return record.get("status") or FAILED, record.get("error")
    marker = read_json(cell_dir / rf.RUNNING_MARKER)
    if marker is not None:
        return (RUNNING, None) if _alive(marker) else (INTERRUPTED, "its process is gone; bench run resumes it")
    slurm = _slurm_state(cell_dir)
    if slurm is not None and slurm.upper() in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING"):
        return RUNNING, f"slurm {slurm.lower()}"
    if (cell_dir / rf.STATE).is_file():
        return INTERRUPTED, "an in-cell state is waiting; bench run resumes it"
    return PENDING, None


def matrix_status(results_dir) -> dict:
    results_dir = Path(results_dir)
    resolved = rf.resolved_manifest(results_dir)
    if not resolved.is_file():
        raise UserError(f"{results_dir}: no {resolved.name}; is this the results folder of a `bench run`?")
    from bench.study.manifest import RESOLVED_OVERRIDES, Manifest
    from bench.study.matrix import expand

    try:
        raw = json.loads(resolved.read_text())
        raw.pop(RESOLVED_OVERRIDES, None)  # how the manifest was made, not a manifest key
        manifest = Manifest.model_validate(raw)
    except Exception as exc:  # noqa: BLE001 -- a corrupt or foreign file
        raise UserError(f"{resolved}: unreadable ({type(exc).__name__}); re-run bench run to rewrite it") from None
    ids = [c.id for c in expand(manifest)]
    ids += sorted(p.name for p in (results_dir / rf.RUNS).glob("*") if p.is_dir() and p.name not in set(ids))
    cells = []
    for cell_id in ids:
        status, reason = cell_status(rf.cell_folder(results_dir, cell_id))
        cells.append({"cell": cell_id, "status": status, "reason": reason})
    counts = Counter(c["status"] for c in cells)
    summary = {"results": str(results_dir), "total": len(cells),
               "counts": {s: counts.get(s, 0) for s in ORDER if counts.get(s)}, "cells": cells}
    add_cell_metrics(summary, results_dir)
    summary["pretrainings"] = pretraining_status(results_dir, manifest)
    summary["estimate"] = estimate_remaining(summary, workers=manifest.workers)
    return summary


def add_cell_metrics(summary: dict, results_dir: Path) -> None:
    """Each finished cell's mIoU and wall time (from its record), and each backbone's mean mIoU."""
    by_backbone: dict[str, list[float]] = {}
    for c in summary["cells"]:
        record = read_json(rf.cell_folder(results_dir, c["cell"]) / rf.RECORD) or {}
        miou = (record.get("metrics") or {}).get("miou")
        c["miou"] = miou if c["status"] == OK else None
        c["wall_s"] = (record.get("timings") or {}).get("wall_s")
        if c["miou"] is not None:
            cell = record.get("cell") or {}
            by_backbone.setdefault(cell_display(cell, "backbone") if "backbone" in cell else "?", []).append(miou)
    summary["backbones"] = {name: {OK: len(v), "mean_miou": sum(v) / len(v)} for name, v in by_backbone.items()}


def pretraining_status(results_dir: Path, manifest) -> list[dict]:
    """One entry per backbone that pre-trains here: status, final loss and wall time when ok."""
    out = []
    for b in manifest.backbones:
        if b.pretrain is None:
            continue
        folder = rf.pretrain_folder(results_dir, b.display_name)
        summary = read_json(folder / rf.SUMMARY) or {}
        if (folder / rf.CHECKPOINT).is_file():
            status, reason = OK, None
        elif (folder / rf.DIVERGENCE).is_file():
            status, reason = DIVERGED, (read_json(folder / rf.DIVERGENCE) or {}).get("reason")
        else:
            status, reason = cell_status(folder)  # the same marker / state / Slurm reading as a cell's
        out.append({"name": b.display_name, "status": status, "reason": reason,
                    "final_loss": summary.get("final_loss") if status == OK else None,
                    "wall_s": summary.get("wall_s") if status == OK else None})
    return out


def _eta_part(walls: list[float], left: int, workers: int) -> float | None:
    if left == 0:
        return 0.0
    return None if not walls else sum(walls) / len(walls) * left / max(1, workers)


def estimate_remaining(summary: dict, workers: int) -> dict:
    """Seconds left: mean wall time of finished jobs x jobs not finished / workers, per kind."""
    cells, pre = summary["cells"], summary["pretrainings"]
    cell_s = _eta_part([c["wall_s"] for c in cells if c["status"] == OK and c.get("wall_s")],
                       sum(c["status"] not in FINISHED for c in cells), workers)
    pre_s = _eta_part([p["wall_s"] for p in pre if p.get("wall_s")],
                      sum(p["status"] not in (OK, DIVERGED) for p in pre), workers)
    total = None if cell_s is None or pre_s is None else cell_s + pre_s
    return {"cells_s": cell_s, "pretrainings_s": pre_s, "total_s": total, "workers": workers}


def format_status(summary: dict, verbose: bool = False) -> str:
    lines = format_pretrainings(summary.get("pretrainings") or [], verbose)
    lines += [f"{summary['results']}: {summary['total']} cells"]
    lines += [f"  {status:<12}{n}" for status, n in summary["counts"].items()]
    for c in summary["cells"]:
        if verbose or c["status"] in (FAILED, SKIPPED, INTERRUPTED, RUNNING):
            miou = f"  mIoU {100 * c['miou']:.2f}" if c.get("miou") is not None else ""
            lines.append(f"{c['status']:<12}{c['cell']}{miou}" + (f"  ({c['reason']})" if c["reason"] else ""))
    lines += format_metrics(summary.get("backbones") or {})
    if "estimate" in summary:
        lines.append(format_estimate(summary["estimate"]))
    return "\n".join(lines)


def format_pretrainings(pre: list[dict], verbose: bool) -> list[str]:
    if not pre:
        return []
    counts = Counter(p["status"] for p in pre)
    lines = [f"pre-trainings: {len(pre)} (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")"]
    for p in pre:
        if verbose or p["status"] != OK:
            loss = f"  final loss {p['final_loss']:.4f}" if p.get("final_loss") is not None else ""
            lines.append(f"  {p['status']:<12}{p['name']}{loss}" + (f"  ({p['reason']})" if p["reason"] else ""))
    return lines


def format_metrics(backbones: dict) -> list[str]:
    if not backbones:
        return []
    return ["finished cells, mean mIoU per backbone:"] + [
        f"  {name:<20}{100 * b['mean_miou']:6.2f}  ({b[OK]} cells)" for name, b in backbones.items()]


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def format_estimate(est: dict) -> str:
    if est["total_s"] == 0:
        return "estimated time to finish: nothing left"
    if est["total_s"] is None:
        return "estimated time to finish: unknown until a cell and a pre-training (if any is left) have finished"
    return (f"estimated time to finish: {_duration(est['total_s'])} (mean wall time of finished jobs x jobs "
            f"left / {est['workers']} workers)")


# -- claims held (bench.core.claims): who works on which job of a shared results folder ------------

def claims_held(results_dir) -> list[dict]:
    """Every claim of the folder's pre-trainings and cells: job, who (user@host pid), since when,
    heartbeat age, and whether it looks stale (a `bench run` would take it over)."""
    import time

    from bench.core.claims import DEFAULT_STALE_AFTER_S, claims_under, holder, staleness

    results_dir = Path(results_dir)
    resolved = read_json(rf.resolved_manifest(results_dir)) or {}
    stale_after = (((resolved.get("executor") or {}).get("claims") or {}).get("stale_after_s")
                   or DEFAULT_STALE_AFTER_S)
    now = time.time()
    rows = []
    for folder, info in claims_under(results_dir):
        try:
            age = now - float(info["heartbeat_unix"])
        except (KeyError, TypeError, ValueError):
            age = None
        why = staleness(info, stale_after, now)
        rows.append({"job": str(folder.relative_to(results_dir)), "by": holder(info), "since": info.get("started"),
                     "heartbeat_age_s": None if age is None else round(age, 1), "stale": why is not None,
                     "stale_reason": why})
    return rows


def format_claims(rows: list[dict]) -> str:
    if not rows:
        return "claims: none held"
    lines = [f"claims: {len(rows)} held"]
    for r in rows:
        age = "?" if r["heartbeat_age_s"] is None else f"{r['heartbeat_age_s']:.0f}s"
        lines.append(f"  {r['job']:<40} {r['by']}  since {r['since']}  heartbeat {age} ago"
                     + (f"  STALE ({r['stale_reason']}; the next bench run takes it over)" if r["stale"] else ""))
    return "\n".join(lines)
