"""The jobs `bench run` hands its executors: one pre-training, one transfer cell. They run where the
executor puts them (this process, a pool worker, a Ray task, a Slurm job), so this module stays
light: a worker imports it to unpickle the job, and the stage it runs only then.

Each job works under its folder's claim (bench/core/claims.py), so two drivers sharing a results
folder never run it twice; shows itself to `bench status` with a running marker while it runs;
removes what a killed earlier run left half-written; and writes its messages to the folder's own
log (text written from a worker would tear the driver's progress bars).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

from bench.core import results_folder as rf
from bench.core.atomic import remove_temp_files
from bench.core.claims import CLAIMED, Claim, claimed, identity
from bench.core.errors import one_line
from bench.core.records import is_finished, write_record

DONE_ELSEWHERE = "done elsewhere"  # a cell another driver finished while this one waited for it


def pretrain_job(config: dict, out_dir: str, progress: bool, claims: dict | None = None) -> str:
    """One pre-training, under its folder's claim (`claims`: the manifest's executor.claims; None:
    the caller holds the claim, as the Ray executor's driver does without a shared filesystem).
    Returns the checkpoint's path, or CLAIMED when another live driver holds the folder."""
    from bench.study.status import running_marker
    from pretrain.api import run_pretrain

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with _claim(folder, f"pretrain {config['name']}", claims) as claim:
        if not claim:
            return CLAIMED
        with running_marker(folder):
            log = functools.partial(rf.append_log, folder)
            _take_over(folder, claim, log)
            # Re-checked under the claim: run_pretrain skips a checkpoint another driver finished
            # while this one waited ("up to date, skipped"), so each pre-training runs once.
            return str(run_pretrain(config, folder, progress=progress, log=log))


def transfer_job(config: dict, out_dir: str, progress: bool, claims: dict | None = None) -> str:
    """One cell, under its folder's claim (see `pretrain_job`): its status, DONE_ELSEWHERE when
    another driver finished it since this driver looked, or CLAIMED when one is running it."""
    from bench.study.status import running_marker
    from transfer.api import Cell, run_cell

    folder = Path(out_dir)
    with _claim(folder, f"cell {Cell(**config['cell']).id}", claims) as claim:
        if not claim:
            return CLAIMED
        if is_finished(folder / rf.RECORD, config["fingerprint"]):
            return DONE_ELSEWHERE  # finished by another driver between our look and our claim
        _take_over(folder, claim, functools.partial(rf.append_log, folder))
        with running_marker(folder):
            try:
                return run_cell(config, folder, progress=progress)["status"]
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 -- recorded, then retried on the next run
                return _record_failure(folder, config, exc)


def _record_failure(folder: Path, config: dict, exc: BaseException) -> str:
    """A cell that raised: its traceback in the log for whoever debugs it, and a `failed` record
    saying why (a later run retries it)."""
    import traceback

    rf.append_log(folder, f"failed:\n{traceback.format_exc()}")
    write_record(folder, {"cell": config["cell"], "fingerprint": config["fingerprint"], "status": rf.FAILED,
                             "error": f"{type(exc).__name__}: {one_line(exc)}", "config": config,
                             "ran_by": identity()})
    return rf.FAILED


def _take_over(folder: Path, claim, log) -> None:
    """Say whose stale claim this job took over, and remove what a killed earlier run of it left
    half-written: the temp files of atomic writes it was making (the finished files they would have
    replaced are intact). `explain/` is `bench explain`'s, which does not claim the folder; claim
    temp files are the claim code's."""
    if isinstance(claim, Claim) and claim.took_over:
        log(claim.took_over)
    removed = remove_temp_files(folder, skip_dirs=(rf.EXPLAIN,), keep_prefixes=(f".{rf.CLAIM}.",))
    if removed:
        log(f"removed {len(removed)} temp file(s) a killed run left: "
            + ", ".join(str(p.relative_to(folder)) for p in removed))


@contextlib.contextmanager
def _claim(folder: Path, job: str, claims: dict | None):
    """The job folder's claim for the block (falsy when a live other driver holds it); with
    `claims` None, True: the caller claimed the folder on the job's behalf."""
    if claims is None:
        yield True
        return
    with claimed(folder, job, **claims) as claim:
        yield claim if claim.acquired else None
