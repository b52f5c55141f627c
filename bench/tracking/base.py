"""What a tracking sink is given: one finished job, read back from the files it wrote.

Sinks see only what is on disk after a job finished (a cell's `record.json`, a pre-training's
`summary.json`, `history.csv` and checkpoint metadata), never the job's live state, so tracking
cannot change what a job computes, and a later run can log a job that an earlier one (or a
cluster node) finished.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from bench.core import results_folder as rf
from bench.core.checkpoint import read_checkpoint_meta
from bench.core.records import read_json



@dataclass
class JobLog:
    """One finished job as every sink logs it."""

    name: str  # the job's name: `pretrain/<backbone>` or the cell id
    kind: str  # "pretrain" | "cell"
    status: str  # ok | diverged
    params: dict[str, str]  # the resolved config, flattened to dotted keys
    metrics: dict[str, list[tuple[int, float]]]  # tag -> (step, value), steps increasing
    summary: dict[str, float]  # headline numbers (hparams dashboards compare runs on them)
    artifacts: list[Path]  # the record files themselves
    digest: str  # sha256 of the record file: a sink that logged this digest has this job
    tags: dict[str, str] = field(default_factory=dict)


class Sink:
    """A tracking backend. `key` names where it writes (a marker per job remembers which
    record each key has logged); `log` writes one job and raises on any failure."""

    key: str

    def log(self, job: JobLog) -> None:
        raise NotImplementedError


def flatten(obj, prefix: str = "") -> dict[str, str]:
    """Nested mappings as dotted keys; scalars as text, lists as compact JSON."""
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif prefix:
        out[prefix] = obj if isinstance(obj, str) else json.dumps(obj, default=str, separators=(",", ":"))
    return out


def _number(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_job(job_dir: Path) -> JobLog | None:
    """The finished job in `job_dir`, or None when it holds none to log (still running, failed,
    skipped, or not a job folder)."""
    if (job_dir / rf.RECORD).is_file():
        return _read_cell(job_dir)
    if (job_dir / rf.SUMMARY).is_file() and (job_dir / rf.CHECKPOINT).is_file():
        return _read_pretraining(job_dir)
    return None


def _read_cell(job_dir: Path) -> JobLog | None:
    path = job_dir / rf.RECORD
    record = read_json(path)
    if record is None or record.get("status") not in rf.FINAL_STATUSES:
        return None  # failed cells are retried, skipped ones never ran
    metrics: dict[str, list[tuple[int, float]]] = {}
    for point in record.get("curve") or []:  # the selected candidate's validation curve
        for k, v in point.items():
            if k != "step" and (x := _number(v)) is not None:
                metrics.setdefault(f"validation/{k}", []).append((int(point["step"]), x))
    final = record.get("metrics") or {}
    step = int((record.get("timings") or {}).get("steps_done") or record["config"].get("steps", 0))
    summary = {}
    for k, v in final.items():  # the evaluation set, scored once at the end
        values = v.items() if isinstance(v, dict) else [(None, v)]
        for sub, value in values:
            if (x := _number(value)) is not None:
                tag = f"evaluation/{k}" if sub is None else f"evaluation/{k}/{sub}"
                metrics[tag] = [(step, x)]
                if sub is None:
                    summary[tag] = x
    return JobLog(name=job_dir.name, kind="cell", status=record["status"], params=flatten(record["config"]),
                  metrics=metrics, summary=summary, artifacts=[path], digest=_digest(path),
                  tags={"bench.kind": "cell", "bench.fingerprint": str(record.get("fingerprint")),
                        **{f"bench.{k}": str(v) for k, v in (record.get("cell") or {}).items()}})


def _read_pretraining(job_dir: Path) -> JobLog | None:
    path = job_dir / rf.SUMMARY
    summary_json = read_json(path)
    if summary_json is None:
        return None
    meta = read_checkpoint_meta(job_dir / rf.CHECKPOINT)
    metrics: dict[str, list[tuple[int, float]]] = {}
    history = job_dir / rf.HISTORY
    if history.is_file():
        with open(history, newline="") as f:
            for row in csv.DictReader(f):  # columns: step, loss, lr, then each loss term and counter
                step = _number(row.get("step"))
                for k, v in row.items():
                    if k != "step" and step is not None and (x := _number(v)) is not None:
                        metrics.setdefault(f"train/{k}", []).append((int(step), x))
    config = {"arch": meta.get("arch"), "method": meta.get("method"), "seed": meta.get("seed"),
              **(meta.get("config") or {})}
    summary = {f"summary/{k}": x for k, v in summary_json.items() if (x := _number(v)) is not None}
    return JobLog(name=f"{rf.PRETRAIN}/{job_dir.name}", kind="pretrain", status=rf.OK, params=flatten(config),
                  metrics=metrics, summary=summary,
                  artifacts=[path, *([history] if history.is_file() else [])], digest=_digest(path),
                  tags={"bench.kind": "pretrain", "bench.fingerprint": str(meta.get("fingerprint")),
                        "bench.backbone": job_dir.name})
