"""A `Job`: one unit of work any executor can run (a pre-training or a transfer cell).

A job is a picklable function + kwargs that writes its outputs (a record, a checkpoint)
atomically under `out_dir`. `needs` lists the files and folders it reads from the results folder
(its pre-training checkpoint, the generated world), so an executor without a shared filesystem
knows what to ship to the worker and what to bring back. `resources` is what one job asks for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


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
