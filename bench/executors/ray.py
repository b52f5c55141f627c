"""The `ray` executor: every job (a pre-training, a transfer cell) is one Ray task.

Each task asks Ray for the job's `resources` (`num_cpus`, `num_gpus`, `memory` in bytes), runs
torch on as many threads as CPUs it asked for (as the local pool does), and is re-run by Ray up to `ray.max_retries` times when its worker dies (killed, out of memory, node
lost). A task with GPUs runs in a fresh worker process and sees only the GPUs Ray assigned it
(CUDA_VISIBLE_DEVICES, set by Ray; see `run`). An exception raised by the job itself is not
retried here: it comes back to the runner, whose `executor.retries` decides (exactly as with the
local executor).

Connecting. A Ray already initialised in this process is used as it is (and left running).
Otherwise `address: null` starts a local Ray instance, `auto` or HOST:PORT joins a running
cluster; either way this executor disconnects (and a local instance stops) when the last
executor using it is closed or garbage-collected -- `bench run` holds one for the whole run, so
one Ray start serves the pre-training stage, the cell stage and their retries.

Shared filesystem (`shared_fs: true`, the default): workers read and write the results folder
at the paths the driver uses; results travel as records on disk, as with `local`.

No shared filesystem (`shared_fs: false`): the driver ships the bytes of every `needs` path (a
file as bytes, a folder as {relative path: bytes}) and of the job's current `out_dir` (so a
finished pre-training is skipped and an interrupted one resumes, as locally) through the object
store. The worker lays them out under a fresh temp root (`$TMPDIR/bench-ray-*`), rewrites every
string (or Path) in the job's kwargs, nested dicts and lists included, that is one of those paths
or lies under one to the local copy (by path prefix, on whole values, spelled as the job's
`needs`/`out_dir` spell them: absolute, symlinks not resolved), runs the job, and
returns its result plus the out_dir files it created or changed and the ones it deleted. The
driver writes them under the real `out_dir`, each atomically and in the order the job wrote them
(the record, written last by a job, lands last), then applies the deletions. The temp root is
mapped back to the real paths in the result and inside returned text files (records and logs
name their checkpoint and data), so the results folder looks as if the job had run locally.

Limits without a shared filesystem: only `needs` and `out_dir` travel. Anything else a job
reads by path -- a real dataset `root:`, an MMSeg config file, a `checkpoint:`/`init:` file not
listed in `needs` -- must exist at the same path on every worker. Binary files are returned as
written, so a pre-trained checkpoint's provenance metadata names the worker's temp copy of the
generated world (its fingerprint does not depend on that path). Folders are shipped whole and
held in memory on both sides: fine for the generated world and checkpoints, not for datasets.
A worker that is killed leaves its temp root behind. On a cluster, every node needs the harness
installed (the same version) and a Ray whose version matches the driver's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Iterator

from bench.core import results_folder as rf
from bench.core.atomic import atomic_path
from bench.core.claims import CLAIMED, acquire
from bench.core.errors import UserError
from bench.executors.job import Job

# A Ray instance started (or cluster joined) by this module, shared by the executors alive in
# this process; the last one to go disconnects. A Ray initialised by someone else is never shut
# down here.
_LOCK = threading.Lock()
_OWNED = {"active": False, "users": 0}


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise UserError('executor "ray" needs Ray: pip install -e ".[ray]"') from exc
    return ray


def _release() -> None:
    with _LOCK:
        _OWNED["users"] -= 1
        if _OWNED["users"] > 0 or not _OWNED["active"]:
            return
        _OWNED["active"] = False
    import ray

    if ray.is_initialized():
        ray.shutdown()


class RayExecutor:
    def __init__(self, spec, *, out_dir: Path, init_kwargs: dict | None = None):
        self.spec = spec
        self.out_dir = Path(out_dir).absolute()  # the results folder (the driver's side)
        # Extra `ray.init` arguments for a Ray this executor starts (e.g. num_cpus).
        self.init_kwargs = dict(init_kwargs or {})
        self._finalizer = None
        _import_ray()  # a missing extra is one line before anything runs

    # -- connection ---------------------------------------------------------------------------

    def _connect(self):
        ray = _import_ray()
        if self._finalizer is not None and self._finalizer.alive:
            return ray
        with _LOCK:
            if not ray.is_initialized():
                kwargs = {"include_dashboard": False, **self.init_kwargs}
                if self.spec.address:
                    kwargs["address"] = self.spec.address
                ray.init(**kwargs)
                _OWNED["active"] = True
            if _OWNED["active"]:  # counted only when it is ours to shut down
                _OWNED["users"] += 1
                self._finalizer = weakref.finalize(self, _release)
        return ray

    def close(self) -> None:
        """Disconnect (stopping a local instance) if this was the last executor using our Ray."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- running ------------------------------------------------------------------------------

    def run(self, jobs: list[Job]) -> Iterator[tuple[int, object, BaseException | None]]:
        """Yield (job index, result, exception) as the Ray tasks finish."""
        if not jobs:
            return
        ray = self._connect()
        self._check_resources(ray, jobs)
        remotes = _remote_functions(ray)
        pending: dict = {}  # object ref -> (job index, path map or None)
        shipped: dict[Path, object] = {}  # a need shared by many jobs (the world) is put once
        held: dict[int, object] = {}  # job index -> the claim this driver holds for it (no shared fs)
        try:
            for i, job in enumerate(jobs):
                submitted = self._submit(ray, remotes, i, job, shipped, held)
                if isinstance(submitted, _Outcome):  # claimed elsewhere, or its inputs could not ship
                    yield i, submitted.result, submitted.exc
                else:
                    pending[submitted[0]] = (i, submitted[1])
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                i, plan = pending.pop(done[0])
                outcome = self._collect(ray, done[0], jobs[i], plan)
                _release_claim(held, i)  # after landing: the record is in place before the claim goes
                yield i, outcome.result, outcome.exc
        finally:  # closed early (Ctrl-C in the driver, an error): stop what is still running
            for i in list(held):
                _release_claim(held, i)
            for ref in pending:
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001 -- best effort on the way out
                    pass

    def _submit(self, ray, remotes: tuple, i: int, job: Job, shipped: dict, held: dict):
        """The job as a Ray task: (object ref, path map or None), or its `_Outcome` when it is not
        submitted (another driver holds its claim, or an input is missing on the driver)."""
        res = job.resources or {}
        options = {"num_cpus": res.get("cpus", 1), "num_gpus": res.get("gpus", 0),
                   "max_retries": self.spec.max_retries, "retry_exceptions": False, "name": job.name}
        if res.get("memory_gb"):
            options["memory"] = int(res["memory_gb"] * 1024**3)
        threads = int(res.get("cpus", 1))
        remote_fn = remotes[1] if options["num_gpus"] else remotes[0]
        if self.spec.shared_fs:
            return remote_fn.options(**options).remote(job.fn, job.kwargs, threads, None), None
        # The worker sees only a temp copy of out_dir, where a claim would guard nothing: the driver
        # claims the real folder for it (before shipping, so that what is shipped is what the claim
        # protects) and the job runs with `claims` None.
        kwargs = job.kwargs
        if kwargs.get("claims") is not None:
            claim = acquire(job.out_dir, job.name, **kwargs["claims"])
            if not claim.acquired:
                return _Outcome(CLAIMED, None)
            held[i] = claim
            kwargs = {**kwargs, "claims": None}
        try:
            plan, refs = self._ship(ray, job, shipped)
        except OSError as exc:  # an input missing on the driver: this job fails, the rest run
            _release_claim(held, i)
            return _Outcome(None, exc)
        return remote_fn.options(**options).remote(job.fn, kwargs, threads, plan, *refs), plan

    def _collect(self, ray, ref, job: Job, plan) -> "_Outcome":
        """A finished task's result, landed in the results folder when it ran on a copy of it."""
        try:
            out = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the job raised: its own exception
            return _Outcome(None, _cause(exc))
        except ray.exceptions.RayError as exc:  # worker died beyond max_retries, cancelled...
            return _Outcome(None, exc)
        if plan is None:
            return _Outcome(out, None)
        try:
            return _Outcome(*self._land(job, plan, out))
        except OSError as land_exc:
            return _Outcome(None, land_exc)

    def _check_resources(self, ray, jobs: list[Job]) -> None:
        """A job that asks for more than the whole cluster would wait forever: say so instead.
        Only for a Ray we started locally; a joined cluster may autoscale."""
        if not _OWNED["active"] or self.spec.address:
            return
        total = ray.cluster_resources()
        for job in jobs:
            res = job.resources or {}
            for key, label, amount, unit in (("CPU", "CPU", res.get("cpus", 1), 1), ("GPU", "GPU", res.get("gpus", 0), 1),
                                             ("memory", "GB of memory", res.get("memory_gb") or 0, 1024**3)):
                have = total.get(key, 0) / unit
                if amount and amount > have:
                    raise UserError(f"{job.name} asks for {amount:g} {label} but the local Ray instance has "
                                    f"{have:.3g}; lower executor.resources or join a cluster (executor.ray.address)")

    # -- without a shared filesystem ----------------------------------------------------------

    def _ship(self, ray, job: Job, shipped: dict) -> tuple[dict, list]:
        """What the worker needs to rebuild the job's inputs: a plan (driver path -> local
        relative path, for rewriting) and the object refs of the bytes."""
        out_dir = Path(job.out_dir).absolute()  # spelled as in kwargs (not resolved: no symlink surprises)
        plan = {"needs": [], "out_dir": (str(out_dir), self._local_name(out_dir, "out")),
                "out_files": _read_tree(out_dir) if out_dir.is_dir() else {}}
        refs = []
        for k, need in enumerate(job.needs):
            need = Path(need).absolute()
            if need not in shipped:
                if need.is_dir():
                    shipped[need] = ray.put(_read_tree(need))
                elif need.is_file():
                    shipped[need] = ray.put(need.read_bytes())
                else:
                    raise FileNotFoundError(f"{job.name}: input {need} does not exist")
            plan["needs"].append((str(need), self._local_name(need, f"need{k}")))
            refs.append(shipped[need])
        return plan, refs

    def _local_name(self, path: Path, tag: str) -> str:
        """Where a driver path lives under the worker's temp root: the results folder's layout
        when it is inside it (readable logs), else a slot of its own."""
        try:
            return str(PurePath("results") / path.relative_to(self.out_dir))
        except ValueError:
            return str(PurePath("external") / tag / path.name)

    def _land(self, job: Job, plan: dict, out) -> tuple[object, BaseException | None]:
        """Write what the worker returned under the real out_dir; map its paths back."""
        root = out["root"]
        back = [(str(PurePath(root) / local), real) for real, local in
                [plan["out_dir"], *plan["needs"]]]
        back.sort(key=lambda pair: len(pair[0]), reverse=True)
        out_dir = Path(job.out_dir)
        root_bytes = root.encode()
        for rel, mode, data in out["files"]:  # in the order the job wrote them
            if root_bytes in data and _is_text(data):
                text = data.decode()
                for local, real in back:
                    text = text.replace(local, real)
                data = text.encode()
            with atomic_path(out_dir / rel) as tmp:
                tmp.write_bytes(data)
                os.chmod(tmp, mode)  # as the job made it (a temp file would be 0600)
        for rel in out["deleted"]:
            (out_dir / rel).unlink(missing_ok=True)
        return _rewrite(out["result"], back), out["error"]


@dataclass
class _Outcome:
    """A job's result or exception, as `run` yields it."""

    result: object
    exc: BaseException | None


def _remote_functions(ray) -> tuple:
    """(the task for CPU jobs, the task for GPU jobs). For a task with num_gpus > 0 Ray sets
    CUDA_VISIBLE_DEVICES to the GPUs it assigned just before the task runs, so the job's cuda:0..
    are those GPUs (and a DDP cell's ranks, which inherit the variable, take one each). That holds
    only in a worker process where CUDA has not started yet: CUDA reads the variable once, and Ray
    reuses worker processes. `@ray.remote(num_gpus=...)` would make such tasks single-use
    (max_calls=1), but `.options(num_gpus=...)` on a CPU-declared function does not -- a second GPU
    task in the same worker would stay on the first one's GPUs. Hence a single-use function of its
    own for GPU jobs (a fresh worker per task: seconds of start-up against a job of minutes). A job
    with gpus 0 is not hidden from the GPUs: Ray leaves CUDA_VISIBLE_DEVICES alone for it, as the
    local executor does."""
    return ray.remote(_run_task), ray.remote(max_calls=1)(_run_task)


def _release_claim(held: dict, i: int) -> None:
    claim = held.pop(i, None)
    if claim is not None:
        claim.release()


def _cause(exc):
    """The job's own exception (UserError, Diverged...) rather than Ray's wrapper, so that the
    runner's checks and one-line messages see what the local executor would give them."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _is_text(data: bytes) -> bool:
    if b"\0" in data:
        return False
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _read_tree(folder: Path) -> dict[str, bytes]:
    # A claim and its lock file belong to the real folder (the driver holds them), not a copy.
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in (rf.CLAIM, rf.CLAIM_MUTEX)}


def _write_tree(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _rewrite(obj, mapping: list[tuple[str, str]]):
    """`obj` with every string or Path that equals, or lies under, a mapped prefix rewritten
    (longest prefix first); containers are rebuilt, everything else is returned as is."""
    if isinstance(obj, (str, PurePath)):
        s = str(obj)
        for src, dst in mapping:
            if s == src or s.startswith(src + os.sep):
                s = dst + s[len(src):]
                return type(obj)(s) if isinstance(obj, PurePath) else s
        return obj
    if isinstance(obj, dict):
        return {k: _rewrite(v, mapping) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_rewrite(v, mapping) for v in obj)
    return obj


# -- the worker side ----------------------------------------------------------------------------

def _run_task(fn, kwargs: dict, threads: int, plan: dict | None, *needs):
    """One job in a Ray worker. With a plan (no shared filesystem), inside a temp root."""
    try:  # what LocalExecutor's workers do: a task's threads are the CPUs it asked for
        import torch

        torch.set_num_threads(max(1, threads))
    except ImportError:
        pass
    if plan is None:
        return fn(**kwargs)
    root = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        mapping = []
        for (real, local), data in zip(plan["needs"], needs):
            if isinstance(data, dict):
                _write_tree(root / local, data)
            else:
                (root / local).parent.mkdir(parents=True, exist_ok=True)
                (root / local).write_bytes(data)
            mapping.append((real, str(root / local)))
        real_out, local_out = plan["out_dir"]
        local_out = root / local_out
        before = plan["out_files"]
        _write_tree(local_out, before)
        mapping.append((real_out, str(local_out)))
        mapping.sort(key=lambda pair: len(pair[0]), reverse=True)

        error = None
        try:
            result = fn(**_rewrite(kwargs, mapping))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 -- returned with the files it left (diverged.json...)
            result, error = None, _picklable(exc)
        written = sorted((p for p in local_out.rglob("*") if p.is_file()), key=lambda p: p.stat().st_mtime_ns)
        files = [(str(p.relative_to(local_out)), p.stat().st_mode & 0o7777, data) for p in written
                 if before.get(str(p.relative_to(local_out))) != (data := p.read_bytes())]
        now = {str(p.relative_to(local_out)) for p in written}
        return {"root": str(root), "result": result, "error": error,
                "files": files, "deleted": sorted(set(before) - now)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _picklable(exc: BaseException) -> BaseException:
    try:
        from ray import cloudpickle

        cloudpickle.loads(cloudpickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 -- an exception that cannot travel: keep its message
        return RuntimeError(f"{type(exc).__name__}: {exc}")


