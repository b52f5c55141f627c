"""Executors run independent jobs (pre-trainings, transfer cells) and report each result.

Every executor has one method, `run(jobs)`, yielding `(job index, result, exception)` as jobs
finish; a `Job` (`job.py`) is a picklable function + kwargs with its outputs, inputs and
resources. Three kinds, one module each:

- `local.py`: a process pool on this machine, or the current process with one worker;
- `ray.py`: a Ray task per job (the `[ray]` extra);
- `slurm.py`: Slurm job arrays through submitit (the `[slurm]` extra).

`make_executor` picks one from a manifest's `executor:` section and `bench run`'s flags. The
optional kinds are imported only when asked for.
"""

from __future__ import annotations

from pathlib import Path

from bench.executors.job import Job
from bench.executors.local import LocalExecutor

__all__ = ["Job", "LocalExecutor", "make_executor"]


def make_executor(spec, *, workers: int = 1, out_dir: Path, kind: str | None = None, ray_address: str | None = None,
                  slurm: dict | None = None):
    """The executor a manifest's `executor:` section (and `bench run`'s flags, which win) asks for."""
    kind = kind or spec.kind
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        from bench.executors.ray import RayExecutor

        ray_spec = spec.ray.model_copy(update={"address": ray_address} if ray_address else {})
        return RayExecutor(ray_spec, out_dir=out_dir)
    if kind == "slurm":
        from bench.executors.slurm import SlurmExecutor

        slurm_spec = spec.slurm.model_copy(update={k: v for k, v in (slurm or {}).items() if v is not None})
        return SlurmExecutor(slurm_spec, out_dir=out_dir)
    raise ValueError(f"unknown executor {kind!r}")
