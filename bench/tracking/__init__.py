"""Experiment tracking: each finished pre-training and cell logged to TensorBoard and/or MLflow
(the manifest's `tracking:` section, docs/manifest.md; the `track` extra).

`bench run` calls `Tracker.log(job_dir)` as each job completes and `Tracker.catch_up()` before
its reports, which logs every finished job of the results folder that a sink has not logged yet
(finished by an earlier run, a cluster node, or while a sink was down). Each job folder keeps a
marker, `tracked.json`, with the sha256 of the record each sink logged, so a job is logged once
per sink and again only when its record changes.

Sinks never block or fail a job: a missing library, an unreachable server, any error, or a job
whose logging takes longer than `timeout_s` is one warning line, after which that sink is off
for the rest of the run. Logging runs in the driver after the job's files are written, in a
daemon thread it waits for at most `timeout_s`, so a hung server cannot hold the run either.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from bench.core import results_folder as rf
from bench.core.errors import one_line
from bench.core.records import read_json, write_json_atomic
from bench.tracking.base import JobLog, Sink, read_job

EXTRA_HINT = 'pip install -e ".[track]"'


class Tracker:
    """The sinks of one run. With no `tracking:` section it holds none and costs nothing."""

    def __init__(self, spec, out_dir: Path, matrix: str, say: Callable[[str], None]):
        self.spec, self.out_dir, self.matrix, self.say = spec, Path(out_dir), matrix, say
        self._sinks: list[Sink] | None = None  # opened on first use: an up-to-date folder imports nothing
        self.timeout_s = spec.timeout_s if spec is not None else 0.0
        self.logged, self.spent_s = 0, 0.0  # records logged (one per job and sink), time in the sinks

    @property
    def enabled(self) -> bool:
        return self.spec is not None and (self.spec.tensorboard is not None or self.spec.mlflow is not None)

    def sinks(self) -> list[Sink]:
        if self._sinks is None:
            self._sinks = []
            if self.spec.tensorboard is not None:
                self._open("TensorBoard", "tensorboard", self._tensorboard)
            if self.spec.mlflow is not None:
                self._open("MLflow", "mlflow", self._mlflow)
        return self._sinks

    def _tensorboard(self) -> Sink:
        from bench.tracking.tensorboard import TensorBoardSink

        return TensorBoardSink(self.spec.tensorboard.dir or self.out_dir / rf.TENSORBOARD, self.matrix)

    def _mlflow(self) -> Sink:
        from bench.tracking.mlflow import MlflowSink, default_tracking_uri

        spec = self.spec.mlflow
        sink = MlflowSink(spec.tracking_uri or default_tracking_uri(self.out_dir), spec.experiment or self.matrix,
                          request_timeout_s=self.timeout_s)
        sink.experiment_id()  # reach the store now: a dead server is found once, not per job
        return sink

    def _open(self, label: str, package: str, make: Callable[[], Sink]) -> None:
        t0 = time.perf_counter()
        try:
            sink = _bounded(make, self.timeout_s, f"opening {label}")
        except ImportError as exc:
            missing = getattr(exc, "name", None) or package
            self.say(f"tracking: {label} is off: {missing} is not installed ({EXTRA_HINT}, the track extra)")
            return
        except Exception as exc:  # noqa: BLE001 -- any failure of a sink is a warning, never the run's
            self.say(f"tracking: {label} is off for this run: {one_line(exc)}")
            return
        finally:
            self.spent_s += time.perf_counter() - t0
        self._sinks.append(sink)

    def log(self, job_dir) -> None:
        """Log the finished job in `job_dir` to every sink that has not logged its record."""
        if not self.enabled:
            return
        try:
            self._log(Path(job_dir))
        except Exception as exc:  # noqa: BLE001 -- e.g. a record of an older schema: the job stands, untracked
            self.say(f"tracking: {job_dir}: not logged ({type(exc).__name__}: {one_line(exc)})")

    def _log(self, job_dir: Path) -> None:
        job = read_job(job_dir)
        if job is None:
            return
        marker_path = Path(job_dir) / rf.TRACKED
        marker = read_json(marker_path) or {}
        logged = [s.key for s in list(self.sinks()) if marker.get(s.key) != job.digest and self._log_one(s, job)]
        if logged:
            write_json_atomic(marker_path, {**marker, **dict.fromkeys(logged, job.digest)})

    def catch_up(self) -> None:
        """Log every finished job in the results folder that some sink is missing."""
        if not self.enabled:
            return
        for job_dir in sorted(p for p in [*self.out_dir.glob(f"{rf.PRETRAIN}/*"), *self.out_dir.glob(f"{rf.RUNS}/*")]
                              if p.is_dir()):
            if not self.sinks():
                break
            self.log(job_dir)
        if self.logged:  # what tracking cost this run, opening the sinks included
            self.say(f"tracked {self.logged} job record{'s' if self.logged > 1 else ''} "
                     f"in {self.spent_s:.1f}s")

    def _log_one(self, sink: Sink, job: JobLog) -> bool:
        t0 = time.perf_counter()
        try:
            _bounded(lambda: sink.log(job), self.timeout_s, f"logging {job.name}")
        except Exception as exc:  # noqa: BLE001
            self._sinks.remove(sink)
            self.say(f"tracking: {sink.key} is off for this run ({job.name}: {one_line(exc)}); "
                     f"the next `bench run` logs what it missed")
            return False
        finally:
            self.spent_s += time.perf_counter() - t0
        self.logged += 1
        return True


def _bounded(fn: Callable, timeout_s: float, what: str):
    """`fn()` in a daemon thread, waited for at most `timeout_s`: its result, or its exception,
    or TimeoutError (the thread is left to finish or hang on its own; it cannot hold the exit)."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller
            out["error"] = exc

    thread = threading.Thread(target=target, name=f"tracking: {what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"{what} took over {timeout_s:g}s")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def open_tracking(spec, out_dir: Path, matrix: str, say: Callable[[str], None]) -> Tracker:
    return Tracker(spec, out_dir, matrix, say)
