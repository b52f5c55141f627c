"""MLflow sink: one run per job (run name = the job's name) in an experiment named after the
matrix, through MlflowClient on an explicit tracking URI (no global MLflow state is touched).

The store: the manifest's `tracking_uri`, else MLFLOW_TRACKING_URI, else a SQLite database in
the results folder (`sqlite:///RESULTS/mlflow.db`, artifacts in RESULTS/mlartifacts) -- MLflow's
own default is a database in whatever folder `bench run` was started from, and its file store
(`./mlruns`) is deprecated. A remote server is asked once per request, briefly: MLflow's default
of 7 retries with exponential back-off and a 120 s timeout would hold a run for minutes when the
server is down; the caller also bounds each job's logging in time (bench/tracking/__init__.py).
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from bench.core import results_folder as rf
from bench.tracking.base import JobLog, Sink

# Names MLflow accepts for params and metrics (mlflow.utils.validation): others become "_".
_BAD_NAME_CHARS = re.compile(r"[^/\w.\- ]")


def _name(key: str) -> str:
    return _BAD_NAME_CHARS.sub("_", key)[:250]


def default_tracking_uri(out_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(out_dir).resolve() / rf.MLFLOW_DB}"


class MlflowSink(Sink):
    def __init__(self, tracking_uri: str, experiment: str, *, request_timeout_s: float):
        # Read by MLflow at request time; a user's own setting wins.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(request_timeout_s))))
        import mlflow  # noqa: F401 -- ImportError without the extra
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
        from mlflow.utils import validation

        # The SQLite store announces each schema migration at INFO; a run's stderr is for its own news.
        for noisy in ("mlflow", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self._Metric, self._Param, self._RunTag, self._limits = Metric, Param, RunTag, validation
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.key = f"mlflow:{tracking_uri}#{experiment}"
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._experiment_id: str | None = None

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            if found is not None:
                self._experiment_id = found.experiment_id
            else:
                self._experiment_id = self.client.create_experiment(self.experiment,
                                                                    artifact_location=self._artifact_location())
        return self._experiment_id

    def _artifact_location(self) -> str | None:
        """Beside a local SQLite database (MLflow would use ./mlruns under the cwd); a server
        or another store decides for itself."""
        if not self.tracking_uri.startswith("sqlite:///"):
            return None
        db = Path(self.tracking_uri.removeprefix("sqlite:///"))
        return (db.parent / "mlartifacts" / self.experiment).resolve().as_uri()

    def log(self, job: JobLog) -> None:
        run = self.client.create_run(self.experiment_id(), run_name=job.name,
                                     tags={**job.tags, "bench.job": job.name, "bench.record_sha256": job.digest})
        run_id = run.info.run_id
        try:
            now = int(time.time() * 1000)
            limit = self._limits.MAX_PARAM_VAL_LENGTH
            params = [self._Param(_name(k), str(v)[:limit]) for k, v in sorted(job.params.items())]
            metrics = [self._Metric(_name(tag), value, now, step)
                       for tag, series in job.metrics.items() for step, value in series]
            last = max((s for series in job.metrics.values() for s, _ in series), default=0)
            metrics += [self._Metric(_name(tag), value, now, last)
                        for tag, value in job.summary.items() if tag not in job.metrics]
            per_batch = self._limits.MAX_PARAMS_TAGS_PER_BATCH
            for i in range(0, len(params), per_batch):
                self.client.log_batch(run_id, params=params[i:i + per_batch])
            per_batch = self._limits.MAX_METRICS_PER_BATCH
            for i in range(0, len(metrics), per_batch):
                self.client.log_batch(run_id, metrics=metrics[i:i + per_batch])
            for path in job.artifacts:
                self.client.log_artifact(run_id, str(path))
        except BaseException:
            try:  # marked, where the store still answers, so a half-logged run is not taken for a whole one
                self.client.set_terminated(run_id, "FAILED")
            except Exception:  # noqa: BLE001 -- the first error is the one to report
                pass
            raise
        # A diverged cell is a result, not a crash: FINISHED, with its status as a tag.
        self.client.set_tag(run_id, "bench.study.status", job.status)
        self.client.set_terminated(run_id, "FINISHED")
