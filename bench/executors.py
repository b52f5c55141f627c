"""Executors run independent jobs (pre-trainings, transfer cells) and report each result.

Every executor has one method, `run(jobs)`, yielding `(job index, result, exception)` as jobs
finish. A `Job` is a picklable function + kwargs that writes its outputs (a record, a checkpoint)
atomically under `out_dir`; `needs` lists the files and folders it reads from the results folder
(its pre-training checkpoint, the generated world), so an executor without a shared filesystem
knows what to ship to the worker and what to bring back. `resources` is what one job asks for.

`local` is a process pool (spawned processes, so CUDA and thread pools start clean) or, with one
worker, the current process. `ray` and `slurm` live in `executor_ray.py` / `executor_slurm.py`
(optional extras); `make_executor` picks one.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator


@dataclass
class Job:
    fn: Callable
    kwargs: dict
    name: str  # e.g. "pretrain/depth" or a cell id: log lines, Slurm job names
    out_dir: Path  # everything the job writes is under here
    needs: list[Path] = field(default_factory=list)  # results-folder inputs (checkpoints, the world)
    resources: dict = field(default_factory=dict)  # cpus, gpus, memory_gb per job

    def __call__(self):
        return self.fn(**self.kwargs)


def make_executor(spec, *, workers: int = 1, out_dir: Path, kind: str | None = None, ray_address: str | None = None,
                  slurm: dict | None = None):
    """The executor a manifest's `executor:` section (and `bench run`'s flags, which win) asks for."""
    kind = kind or spec.kind
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        from bench.executor_ray import RayExecutor

        ray_spec = spec.ray.model_copy(update={"address": ray_address} if ray_address else {})
        return RayExecutor(ray_spec, out_dir=out_dir)
    if kind == "slurm":
        from bench.executor_slurm import SlurmExecutor

        slurm_spec = spec.slurm.model_copy(update={k: v for k, v in (slurm or {}).items() if v is not None})
        return SlurmExecutor(slurm_spec, out_dir=out_dir)
    raise ValueError(f"unknown executor {kind!r}")


def _init_worker(threads: int, counter, lock) -> None:
    import torch

    from bench.progress import init_worker

    torch.set_num_threads(threads)
    init_worker(counter, lock)


def _call(fn: Callable, kwargs: dict):
    return fn(**kwargs)


class LocalExecutor:
    def __init__(self, workers: int = 1):
        self.workers = max(1, workers)
        # Share the cores: N workers each with all cores' threads would oversubscribe the CPU.
        self.threads = max(1, (os.cpu_count() or 1) // self.workers)

    def run(self, jobs: list[Job]) -> Iterator[tuple[int, object, BaseException | None]]:
        """Yield (job index, result, exception) as jobs finish."""
        if self.workers == 1 or len(jobs) <= 1:
            import torch

            # A job gets `threads` however many jobs its stage has: CPU kernels sum in an order
            # that depends on the thread count, and a result must not depend on the job mix.
            torch.set_num_threads(self.threads)
            for i, job in enumerate(jobs):
                try:
                    yield i, job(), None
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # noqa: BLE001 -- reported per job by the caller
                    yield i, None, exc
            return
        from tqdm import tqdm

        ctx = mp.get_context("spawn")
        lock = ctx.RLock()
        tqdm.set_lock(lock)
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(self.threads, ctx.Value("i", 0), lock)) as pool:
            futures = {pool.submit(_call, job.fn, job.kwargs): i for i, job in enumerate(jobs)}
            for fut in as_completed(futures):
                exc = fut.exception()
                yield futures[fut], (None if exc else fut.result()), exc
