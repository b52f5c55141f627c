"""The local executor: a process pool on this machine, or the current process for one worker.
One pool serves every stage of a run; `close()` ends it.

Pool workers are spawned (not forked), so CUDA and thread pools start clean in each.

GPUs. A job that asks for GPUs (`resources.gpus` > 0) gets its own: worker process k of the pool
sees only the k-th block of `gpus` ids of the node's visible GPUs, through CUDA_VISIBLE_DEVICES
set in the pool initializer before anything in that process touches CUDA (so inside the job the
GPUs are cuda:0 .. cuda:gpus-1, and a DDP cell's ranks take one each). Blocks are contiguous,
not spread: with 4 GPUs, `workers: 2` and `gpus: 2` worker 0 sees "0,1" and worker 1 "2,3"; with
`gpus: 1` they see "0" and "1", and GPUs 2 and 3 stay idle (neighbouring ids are usually the
best-connected pairs, which is what a multi-GPU job wants). More GPUs asked for than visible is
one UserError before any job runs. `gpus: 0` (the default) sets nothing: the jobs see whatever
this process sees.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterator, Sequence

from bench.core.errors import UserError
from bench.executors.job import Job

ENV = "CUDA_VISIBLE_DEVICES"


def visible_gpus(given: Sequence[str | int] | None = None) -> list[str]:
    """The ids of the GPUs this process may hand out: `given` (tests, or a caller that knows),
    else CUDA_VISIBLE_DEVICES when set (ids as written: numbers, or GPU-/MIG- UUIDs), else
    0 .. torch.cuda.device_count() - 1."""
    if given is not None:
        return [str(g) for g in given]
    env = os.environ.get(ENV)
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    import torch

    # Counted through NVML where it is there, which does not initialise CUDA in this process.
    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_slices(workers: int, gpus_per_job: int, visible: Sequence[str]) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES for each of `workers` worker processes whose jobs ask for
    `gpus_per_job` GPUs each: worker k gets the k-th contiguous block of `visible`. None when
    the jobs ask for no GPU (nothing is set). More than visible: one UserError."""
    if gpus_per_job <= 0:
        return None
    need = workers * gpus_per_job
    if need > len(visible):
        def many(n: int, word: str) -> str:
            return f"{n} {word}{'s' if n != 1 else ''}"

        shown = ",".join(visible) if visible else "none"
        raise UserError(f"local executor: {many(workers, 'worker')} x {many(gpus_per_job, 'GPU')} per job "
                        f"(executor.resources.gpus) need {many(need, 'GPU')} but {len(visible)} "
                        f"{'is' if len(visible) == 1 else 'are'} visible ({shown}); lower workers or gpus")
    return [",".join(visible[k * gpus_per_job:(k + 1) * gpus_per_job]) for k in range(workers)]


def cpu_budget() -> int:
    """The cores this process's jobs may share: OMP_NUM_THREADS where it is set (the usual cap a
    test runner, a batch scheduler or a user puts on a process's threads: two pytest-xdist workers
    each take one of two cores), else the CPUs this process may run on."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        pass
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _init_worker(threads: int, counter, lock, slices: list[str] | None = None, slot=None) -> None:
    # First, before torch is imported: CUDA reads CUDA_VISIBLE_DEVICES once, when it initialises.
    if slices is not None:
        # Each process takes the next slot. Its own counter, not the progress bars' (which counts
        # from 1 and is theirs); the pool never replaces a worker, so slots stay below `workers`.
        with slot.get_lock():
            index = slot.value
            slot.value += 1
        os.environ[ENV] = slices[index]

    import torch

    from bench.core.progress import init_worker

    torch.set_num_threads(threads)
    init_worker(counter, lock)


def _call(fn: Callable, kwargs: dict):
    return fn(**kwargs)


class LocalExecutor:
    def __init__(self, workers: int = 1, visible_gpus: Sequence[str | int] | None = None):
        self.workers = max(1, workers)
        # Share the cores: N workers each with all cores' threads would oversubscribe the CPU.
        self.threads = max(1, cpu_budget() // self.workers)
        # The node's GPUs as seen at the first run (None: look then). Fixed from then on, so that
        # a later stage is not confused by what an earlier in-process stage did to the variable.
        self._visible = None if visible_gpus is None else [str(g) for g in visible_gpus]
        # One pool for every stage of a run (pre-trainings, then cells): each worker process imports
        # the harness once (seconds of torch and friends), not once per stage. Rebuilt when a stage's
        # jobs need other GPU slices, or after a worker died and broke it; `close` shuts it down.
        self._pool, self._pool_slices = None, None

    def _slices(self, jobs: list[Job]) -> list[str] | None:
        # A stage's cells share one resources dict, but its pre-trainings may differ
        # (`pretrain.gpus`). Which worker takes which job is not known in advance, so every
        # worker gets a block of the largest request (a job asking for fewer uses the first ones).
        gpus = max(int((job.resources or {}).get("gpus", 0) or 0) for job in jobs)
        if gpus <= 0:
            return None
        if self._visible is None:
            self._visible = visible_gpus()
        return gpu_slices(self.workers, gpus, self._visible)

    def run(self, jobs: list[Job]) -> Iterator[tuple[int, object, BaseException | None]]:
        """Yield (job index, result, exception) as jobs finish."""
        if not jobs:
            return
        slices = self._slices(jobs)  # too many GPUs asked for: one line before any job runs
        if self.workers == 1 or len(jobs) <= 1:
            yield from self._run_here(jobs, None if slices is None else slices[0])
            return
        pool = self._pool_for(slices)
        futures = {pool.submit(_call, job.fn, job.kwargs): i for i, job in enumerate(jobs)}
        try:
            for fut in as_completed(futures):
                exc = fut.exception()
                if isinstance(exc, BrokenProcessPool):  # a worker died (e.g. killed): the next stage gets a new pool
                    self._pool = None
                yield futures[fut], (None if exc else fut.result()), exc
        finally:  # the caller stopped early (an error, Ctrl-C): what has not started does not start
            for fut in futures:
                fut.cancel()

    def _pool_for(self, slices: list[str] | None) -> ProcessPoolExecutor:
        if self._pool is not None and self._pool_slices == slices:
            return self._pool
        self.close()
        from tqdm import tqdm

        ctx = mp.get_context("spawn")
        lock = ctx.RLock()
        tqdm.set_lock(lock)
        self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                         initargs=(self.threads, ctx.Value("i", 0), lock, slices, ctx.Value("i", 0)))
        self._pool_slices = slices
        return self._pool

    def close(self) -> None:
        """Shut the worker processes down (waiting for a job still running); a later run starts new ones."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _run_here(self, jobs: list[Job], gpus: str | None):
        """The jobs one after the other in this process, on the first worker's GPUs (if any)."""
        import torch

        # A job gets `threads` however many jobs its stage has: CPU kernels sum in an order
        # that depends on the thread count, and a result must not depend on the job mix.
        torch.set_num_threads(self.threads)
        before = os.environ.get(ENV)
        # Restrict only when it narrows the choice, and only while CUDA is not initialised here:
        # CUDA fixed its device list when it started (an earlier stage of this process, a caller),
        # so a new value would change nothing for this process but would renumber the GPUs for
        # the processes it starts (a DDP cell's ranks) -- those would then disagree with it.
        restrict = (gpus is not None and len(gpus.split(",")) < len(self._visible or [])
                    and not torch.cuda.is_initialized())
        if restrict:
            os.environ[ENV] = gpus
        try:
            for i, job in enumerate(jobs):
                try:
                    yield i, job(), None
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # noqa: BLE001 -- reported per job by the caller
                    yield i, None, exc
        finally:  # the next stage (maybe a pool, whose workers inherit the environment) starts as before
            if restrict:
                if before is None:
                    os.environ.pop(ENV, None)
                else:
                    os.environ[ENV] = before
