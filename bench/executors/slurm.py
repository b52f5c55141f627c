"""Slurm executor: jobs run as a submitit job array, requeued after a preemption or a timeout.

`executor: {kind: slurm}` (extra `pip install -e ".[slurm]"`). Jobs with the same resources go to
Slurm as one job array (`executor.batch()`: partition, account, time, cpus, GPUs per task,
memory, at most `array_parallelism` running at once, `sbatch:` for anything else). Each job is wrapped in a
checkpointable callable: when Slurm signals a preemption or an imminent timeout, submitit asks it
for a checkpoint and requeues the job; it re-runs the same function on the same `out_dir`, which
resumes from its own snapshot (a pre-training's or a cell's `OUT/state.pt`). After `max_requeues`
requeues the job fails instead.

Every submitted job leaves `out_dir/slurm.json` (job id, array index, time, submitit folder). A
later `bench run` asks the scheduler about it before submitting again: a job still pending or
running is not submitted twice (`wait: true` waits for it, `wait: false` reports it as
"submitted"). `job_state(out_dir)` is that question on its own, for `bench status`.

`cluster: local` runs the same code path with submitit's local executor (jobs are subprocesses
of this one, no Slurm needed: the tests use it); `cluster: debug` runs jobs in this process.
submitit is imported lazily, so nothing here is needed unless the executor is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import socket
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from bench.core import results_folder as rf
from bench.core.errors import UserError
from bench.executors.job import Job
from bench.core.records import read_json, write_json_atomic

INSTALL_HINT = 'the slurm executor needs submitit: pip install -e ".[slurm]"'

# sacct states of a job that still holds or waits for a slot. PREEMPTED is left out: a requeued job
# shows REQUEUED/PENDING, so PREEMPTED is final (and a final job must not block a resubmission).
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                 "COMPLETING", "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING"}
# sacct may not list a job for a moment after sbatch (or at all when accounting lags): UNKNOWN
# counts as active this long after submission, so a quick second `bench run` cannot double-submit.
UNKNOWN_GRACE_S = 600


def _submitit():
    try:
        import submitit
    except ImportError as exc:
        raise UserError(INSTALL_HINT) from exc
    return submitit


def job_key(job: Job) -> str:
    """What the job computes: a slurm.json whose key differs belongs to an older config.
    (`progress` only changes how it reports, so `--no-progress` does not make a job stale.)"""
    kwargs = {k: v for k, v in job.kwargs.items() if k != "progress"}
    text = json.dumps({"fn": f"{job.fn.__module__}.{job.fn.__qualname__}", "kwargs": kwargs},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class _Requeueable:
    """A Job as submitit runs it on the node. submitit calls `checkpoint()` when the job is
    preempted or about to time out (the Slurm signal) and requeues what it returns: this same
    callable, one requeue further on, so the job restarts and resumes from its `OUT/state.pt`.
    Duck-typed rather than a `submitit.helpers.Checkpointable` subclass so that this module
    imports without submitit."""

    fn: Callable
    kwargs: dict
    name: str
    out_dir: str
    cpus: int = 1
    max_requeues: int = 3
    requeues: int = 0

    def __call__(self):
        # Before torch is imported in this fresh process: one thread per allotted CPU (like
        # LocalExecutor), not one per core of the node.
        os.environ.setdefault("OMP_NUM_THREADS", str(self.cpus))
        where = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID") or "?"
        rf.append_log(self.out_dir, f"slurm: {self.name} started as job {where} on {socket.gethostname()}"
                           f" (requeue {self.requeues}/{self.max_requeues})")
        try:
            return ("ok", self.fn(**self.kwargs))
        except Exception as exc:  # noqa: BLE001 -- returned, so the driver re-raises the same type
            tb = traceback.format_exc()
            print(tb, file=sys.stderr, flush=True)  # submitit's .err log
            rf.append_log(self.out_dir, f"slurm: {self.name} failed:\n{tb}")
            try:
                pickle.dumps(exc)
            except Exception:  # noqa: BLE001
                exc = None
            return ("error", exc, tb)

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        if self.requeues >= self.max_requeues:  # None: submitit does not requeue, the job fails
            rf.append_log(self.out_dir, f"slurm: preempted or timed out after {self.requeues} requeues "
                               f"(max_requeues {self.max_requeues}); not requeued")
            return None
        rf.append_log(self.out_dir, f"slurm: preempted or timed out; requeued ({self.requeues + 1}/{self.max_requeues})")
        return DelayedSubmission(replace(self, requeues=self.requeues + 1))


class SlurmJobFailed(RuntimeError):
    """A job that died outside the harness's own code (killed, out of memory, never requeued)."""


def _why(exc: BaseException) -> str:
    """One line out of submitit's many: the trace's last line, or the first lines of the rest."""
    text = str(exc)
    parts = text.split("-" * 22)
    if len(parts) >= 3:  # FailedJobError: the trace sits between two dashed rules
        lines = [line.strip() for line in parts[1].splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return " ".join(" ".join(text.strip().splitlines()[:2]).split()) or type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Job state from slurm.json


def _pid_alive(pid: int) -> bool:
    """A running local submitit controller (a zombie or a recycled pid is not one)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        if not Path("/proc").is_dir():  # no procfs (macOS): the signal probe is all there is
            try:
                os.kill(pid, 0)
                return True
            except OSError:
                return False
        return False
    return b"submitit" in cmdline


def _state(info: dict) -> str:
    folder, job_id = Path(info["folder"]), str(info["job_id"])
    if info.get("cluster") == "local":
        # The submitit controller's pid is the job id; a new process cannot ask submitit about it.
        if job_id.isdigit() and _pid_alive(int(job_id)):
            return "RUNNING"
        return "FINISHED" if any(folder.glob(f"{job_id}_*_result.pkl")) else "INTERRUPTED"
    if info.get("cluster") != "slurm":
        return "UNKNOWN"
    try:
        from submitit import SlurmJob
    except ImportError:
        return "UNKNOWN"
    return SlurmJob(folder, job_id).get_info(mode="force").get("State") or "UNKNOWN"


def _is_active(state: str, info: dict) -> bool:
    state = state.split()[0].upper() if state else "UNKNOWN"  # sacct: "CANCELLED by 123"
    if state == "UNKNOWN":
        return time.time() - float(info.get("submitted_at_unix", 0)) < UNKNOWN_GRACE_S
    return state in ACTIVE_STATES


def job_state(out_dir) -> str | None:
    """The scheduler's state of the job last submitted for `out_dir` (PENDING, RUNNING,
    COMPLETED, FAILED, ... for Slurm; RUNNING, FINISHED or INTERRUPTED for `cluster: local`),
    or None when it was never submitted through Slurm."""
    info = read_json(Path(out_dir) / rf.SLURM_JOB)
    return None if info is None else _state(info)


# ---------------------------------------------------------------------------------------------
# The executor


@dataclass
class _Running:
    index: int
    job: object  # a submitit Job
    info: dict
    attached: bool = False  # submitted by an earlier `bench run`, found still running


class SlurmExecutor:
    def __init__(self, spec, *, out_dir: Path):
        self.submitit = _submitit()
        if spec.cluster == "slurm" and shutil.which("srun") is None:
            raise UserError('executor.slurm.cluster is "slurm" but there is no srun here; run on a Slurm login '
                            'node, or set cluster: local to run the jobs as local processes')
        self.spec = spec
        self.folder = Path(spec.folder or Path(out_dir) / "slurm").resolve()
        self.name = f"bench-{Path(out_dir).name}"
        # The debug cluster runs a job in this process when asked for its result: nothing to leave behind.
        self.wait = spec.wait or spec.cluster == "debug"
        self.poll_s = 10.0 if spec.cluster == "slurm" else 0.25
        # submitit's local executor starts every job at once; keep to array_parallelism like Slurm's %N.
        self.limit = spec.array_parallelism if spec.cluster == "local" and self.wait else None

    def _executor(self, resources: dict):
        spec = self.spec
        ex = self.submitit.AutoExecutor(folder=self.folder, cluster=spec.cluster,
                                        slurm_max_num_timeout=spec.max_requeues)
        params = {"name": self.name, "timeout_min": spec.time_min, "cpus_per_task": int(resources.get("cpus", 1)),
                  "slurm_array_parallelism": spec.array_parallelism,
                  "slurm_partition": spec.partition, "slurm_account": spec.account}
        if resources.get("memory_gb"):
            params["mem_gb"] = float(resources["memory_gb"])
        valid = self.submitit.SlurmExecutor._valid_parameters()
        # --requeue: `scontrol requeue` (submitit's, on preemption/timeout) needs a requeueable job
        # where the cluster's JobRequeue default is 0; Slurm's own preemption requeue uses it too.
        extra = {"requeue": True}
        gpu_params, gpu_flags = self._gpu_request(int(resources.get("gpus", 0)))
        params.update(gpu_params)
        extra.update(gpu_flags)  # before `sbatch:`, so that the manifest's own flags win
        for key, value in spec.sbatch.items():  # submitit's own names first, raw sbatch flags otherwise
            if key.replace("-", "_") in valid:
                params[f"slurm_{key.replace('-', '_')}"] = value
            else:
                extra[key] = value
        params["slurm_additional_parameters"] = {k: v for k, v in extra.items() if v is not None and v is not False}
        try:
            ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
        except (ValueError, TypeError, NameError, AssertionError) as exc:
            raise UserError(f"executor.slurm: {' '.join(str(exc).split())}") from exc
        return ex

    def _gpu_request(self, gpus: int) -> tuple[dict, dict]:
        """(submitit parameters, raw sbatch flags) asking for `gpus` GPUs for the job.

        On Slurm, GPUs per task (--gpus-per-task): Slurm binds them to the job's one task and sets
        its CUDA_VISIBLE_DEVICES, so the job (and a DDP cell's ranks, one GPU each) sees exactly
        its own -- per node would leave the binding to the site's defaults. Slurm accepts
        --gpus-per-task only with an explicit task count, hence --ntasks=1. submitit's local
        cluster knows only gpus_per_node, from which it sets CUDA_VISIBLE_DEVICES itself."""
        if self.spec.cluster != "slurm":
            return {"gpus_per_node": gpus}, {}
        if gpus <= 0:  # a CPU job asks for no GPU at all
            return {}, {}
        return {"slurm_gpus_per_task": gpus}, {"ntasks": 1}

    def _prior(self, job: Job) -> dict | None:
        """slurm.json of a job for this out_dir that is still queued or running, else None. A
        running job for an older config is cancelled: it would write into the same folder."""
        info = read_json(Path(job.out_dir) / rf.SLURM_JOB)
        if info is None or info.get("cluster") != self.spec.cluster or self.spec.cluster == "debug":
            return None
        state = _state(info)
        if not _is_active(state, info):
            return None
        if info.get("key") == job_key(job):
            return info
        rf.append_log(job.out_dir, f"slurm: cancelling job {info['job_id']} ({state}): its config is out of date")
        self._cancel(info)
        return None

    def _cancel(self, info: dict) -> None:
        import signal
        import subprocess

        if info["cluster"] == "local":
            # SIGINT stops submitit's local controller and its tasks, unless the controller was
            # started with SIGINT ignored (a disposition it inherits); then SIGTERM, which it
            # forwards to its tasks and so ends once they have.
            try:
                pid = int(info["job_id"])
                os.kill(pid, signal.SIGINT)
                deadline = time.time() + 2.0
                while _pid_alive(pid) and time.time() < deadline:
                    time.sleep(0.05)
                if _pid_alive(pid):
                    os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError):
                pass
        else:
            subprocess.call(["scancel", str(info["job_id"])])

    def _attach(self, info: dict):
        if info["cluster"] == "local":
            return self.submitit.local.local.LocalJob(info["folder"], str(info["job_id"]))
        return self.submitit.SlurmJob(info["folder"], str(info["job_id"]))

    def _submit(self, jobs: list[Job], indices: list[int]) -> list[_Running]:
        """Submit these jobs, one array per distinct resources; write each slurm.json."""
        groups: dict[str, list[int]] = {}
        for i in indices:
            groups.setdefault(json.dumps(jobs[i].resources, sort_keys=True), []).append(i)
        out = []
        for resources, group in groups.items():
            ex = self._executor(json.loads(resources))
            try:
                with ex.batch():
                    handles = [ex.submit(_Requeueable(jobs[i].fn, jobs[i].kwargs, jobs[i].name, str(jobs[i].out_dir),
                                                      cpus=int(jobs[i].resources.get("cpus", 1)),
                                                      max_requeues=self.spec.max_requeues)) for i in group]
            except (OSError, RuntimeError, ValueError) as exc:  # submitit's errors are RuntimeErrors
                # sbatch's refusal (bad partition, account, limits) is the user's to fix: one line.
                raise UserError(f"slurm: submitting {len(group)} jobs failed: {' '.join(str(exc).split())}") from exc
            now = time.time()
            for k, (i, handle) in enumerate(zip(group, handles)):
                job_id = str(handle.job_id)
                info = {"job_id": job_id, "array_index": int(job_id.split("_")[1]) if "_" in job_id else k,
                        "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)),
                        "submitted_at_unix": now, "folder": str(self.folder), "cluster": self.spec.cluster,
                        "name": jobs[i].name, "key": job_key(jobs[i]),
                        "log": str(handle.paths.stderr) if self.spec.cluster != "debug" else None}
                if self.spec.cluster != "debug":
                    write_json_atomic(Path(jobs[i].out_dir) / rf.SLURM_JOB, info)
                    rf.append_log(jobs[i].out_dir, f"slurm: submitted {jobs[i].name} as job {job_id} (logs: {info['log']})")
                if self.spec.cluster == "local":  # local disk: no need for submitit's 15 s wait on a slow NFS
                    handle._results_timeout_s = 2
                out.append(_Running(i, handle, info))
        return out

    def _done(self, r: _Running) -> bool:
        if r.attached and r.info["cluster"] == "local":  # not our child: submitit cannot poll it
            return _state(r.info) != "RUNNING"
        return r.job.done()

    def _outcome(self, r: _Running, name: str) -> tuple[object, BaseException | None]:
        try:
            result = r.job.result()
        except Exception as exc:  # noqa: BLE001 -- submitit's FailedJobError/UncompletedJobError
            return None, SlurmJobFailed(f"{name}: slurm job {r.info['job_id']} failed ({_why(exc)}); "
                                        f"log: {r.info.get('log')}")
        if isinstance(result, tuple) and result and result[0] == "ok":
            return result[1], None
        if isinstance(result, tuple) and result and result[0] == "error":
            exc, tb = result[1], result[2]
            if exc is None:
                last = tb.strip().splitlines()[-1] if tb.strip() else "unknown error"
                exc = SlurmJobFailed(f"{name}: {last}; log: {r.info.get('log')}")
            return None, exc
        return result, None

    def run(self, jobs: list[Job]) -> Iterator[tuple[int, object, BaseException | None]]:
        """Yield (job index, result, exception) as jobs finish; with `wait: false`, (i, "submitted",
        None) once each job is queued (or found still queued from an earlier run)."""
        running: list[_Running] = []
        queue: list[int] = []
        for i, job in enumerate(jobs):
            info = self._prior(job)
            if info is None:
                queue.append(i)
            elif self.wait:
                running.append(_Running(i, self._attach(info), info, attached=True))
            else:
                yield i, "submitted", None

        def top_up() -> None:
            room = len(queue) if self.limit is None else max(0, self.limit - len(running))
            if room:
                batch, queue[:] = queue[:room], queue[room:]
                running.extend(self._submit(jobs, batch))

        top_up()
        if not self.wait:
            for r in running:
                yield r.index, "submitted", None
            return
        while running or queue:
            finished = [r for r in running if self._done(r)]
            for r in finished:
                running.remove(r)
                result, exc = self._outcome(r, jobs[r.index].name)
                yield r.index, result, exc
            top_up()
            if running and not finished:
                time.sleep(self.poll_s)
