"""The local executor: a process pool on this machine, or the current process for one worker.

Pool workers are spawned (not forked), so CUDA and thread pools start clean in each.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Iterator

from bench.executors.job import Job


def _init_worker(threads: int, counter, lock) -> None:
    import torch

    from bench.core.progress import init_worker

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
