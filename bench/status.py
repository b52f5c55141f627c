"""`bench status RESULTS_DIR`: where a matrix stands, from the results folder alone.

Each cell of the resolved manifest (plus any submitted backbone's records) is one of:

- `done` / `diverged`: its record has that final status;
- `failed` / `skipped`: its record says so, with a one-line reason (skipped: its pre-training failed);
- `running`: no record yet, and a live process holds its `running.json` marker, or its Slurm
  job is queued or running;
- `interrupted`: a marker or an in-cell `state.pt` left by a process that is gone (`bench run`
  resumes it);
- `pending`: nothing yet.

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

from bench.core.errors import UserError
from bench.core.records import read_json

MARKER = "running.json"
ORDER = ["done", "diverged", "running", "interrupted", "failed", "skipped", "pending"]


@contextlib.contextmanager
def running_marker(cell_dir: Path):
    """`running.json` (host, pid, start) for as long as the cell runs in this process."""
    cell_dir.mkdir(parents=True, exist_ok=True)
    path = cell_dir / MARKER
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
    if not (cell_dir / "slurm.json").is_file():
        return None
    try:
        from bench.executors.slurm import job_state
    except ImportError:
        return None
    return job_state(cell_dir)


def cell_status(cell_dir: Path) -> tuple[str, str | None]:
    record = read_json(cell_dir / "record.json")
    if record is not None:
        status = record.get("status")
        return ("done" if status == "ok" else status or "failed"), record.get("error")
    marker = read_json(cell_dir / MARKER)
    if marker is not None:
        return ("running", None) if _alive(marker) else ("interrupted", "its process is gone; bench run resumes it")
    slurm = _slurm_state(cell_dir)
    if slurm is not None and slurm.upper() in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING"):
        return "running", f"slurm {slurm.lower()}"
    if (cell_dir / "state.pt").is_file():
        return "interrupted", "an in-cell state is waiting; bench run resumes it"
    return "pending", None


def matrix_status(results_dir) -> dict:
    results_dir = Path(results_dir)
    resolved = results_dir / "manifest.resolved.json"
    if not resolved.is_file():
        raise UserError(f"{results_dir}: no manifest.resolved.json; is this the results folder of a `bench run`?")
    from bench.manifest import Manifest
    from bench.matrix import expand

    try:
        manifest = Manifest.model_validate(json.loads(resolved.read_text()))
    except Exception as exc:  # noqa: BLE001 -- a corrupt or foreign file
        raise UserError(f"{resolved}: unreadable ({type(exc).__name__}); re-run bench run to rewrite it") from None
    ids = [c.id for c in expand(manifest)]
    ids += sorted(p.name for p in (results_dir / "runs").glob("*") if p.is_dir() and p.name not in set(ids))
    cells = []
    for cell_id in ids:
        status, reason = cell_status(results_dir / "runs" / cell_id)
        cells.append({"cell": cell_id, "status": status, "reason": reason})
    counts = Counter(c["status"] for c in cells)
    return {"results": str(results_dir), "total": len(cells),
            "counts": {s: counts.get(s, 0) for s in ORDER if counts.get(s)}, "cells": cells}


def format_status(summary: dict, verbose: bool = False) -> str:
    lines = [f"{summary['results']}: {summary['total']} cells"]
    lines += [f"  {status:<12}{n}" for status, n in summary["counts"].items()]
    for c in summary["cells"]:
        if verbose or c["status"] in ("failed", "skipped", "interrupted", "running"):
            lines.append(f"{c['status']:<12}{c['cell']}" + (f"  ({c['reason']})" if c["reason"] else ""))
    return "\n".join(lines)


# -- claims held (bench.core.claims): who works on which job of a shared results folder ------------

def claims_held(results_dir) -> list[dict]:
    """Every claim of the folder's pre-trainings and cells: job, who (user@host pid), since when,
    heartbeat age, and whether it looks stale (a `bench run` would take it over)."""
    import time

    from bench.core.claims import DEFAULT_STALE_AFTER_S, claims_under, holder, staleness

    results_dir = Path(results_dir)
    resolved = read_json(results_dir / "manifest.resolved.json") or {}
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
