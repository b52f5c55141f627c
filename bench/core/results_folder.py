"""The results folder: every file and folder name in it, the run record's schema, and the words
for a job's status. The one place each is spelt; everything that writes or reads a results folder
(the runner, the stages, `bench status`, the reports, tracking, the executors) names them from here.

    RESULTS/
      manifest.resolved.json        the manifest as run (RESOLVED_MANIFEST)
      data/synth-<id>/              a generated world (DATA, world_folder), its meta.json (WORLD_META)
      imports/<backbone>/           a converted foreign checkpoint (IMPORTS: checkpoint + import.json)
      pretrain/<backbone>/          a pre-training (PRETRAIN): checkpoint, summary.json, history.csv, log.txt
      splits/<dataset>/             the few-shot subsets every backbone shares (SPLITS)
      runs/<cell id>/               a transfer cell (RUNS): record.json, log.txt, cka.json, predictions/
      leaderboard.csv/.md, per_class.csv, failures.csv, report.html, tables/, plots/, cka/

A job's folder (a cell's or a pre-training's) holds its record or checkpoint, its `log.txt`, its
resumable `state.pt` while it runs, its claim (`claim.json`, bench/core/claims.py) and its running
marker (`running.json`) while a driver holds it.
"""

from __future__ import annotations

import time
from pathlib import Path

# --- the folder itself -----------------------------------------------------------------------------
RESOLVED_MANIFEST = "manifest.resolved.json"
DATA = "data"
IMPORTS = "imports"
PRETRAIN = "pretrain"
SPLITS = "splits"
RUNS = "runs"
PLOTS = "plots"
TABLES = "tables"
CKA = "cka"  # the pre-trained vs fine-tuned heatmaps (layer x layer)
TENSORBOARD = "tensorboard"
MLFLOW_DB = "mlflow.db"
SLURM = "slurm"  # submitit's folder
AGGREGATE_LOCK = ".aggregate.lock"

# --- reports ---------------------------------------------------------------------------------------
LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_MD = "leaderboard.md"
PER_CLASS_CSV = "per_class.csv"
FAILURES_CSV = "failures.csv"
REPORT_HTML = "report.html"

# --- a generated world (data/synth-<id>/) ----------------------------------------------------------
WORLD_PREFIX = "synth-"
WORLD_META = "meta.json"
WORLD_ID_CHARS = 12  # how much of the world's fingerprint names its folder

# --- any job's folder ------------------------------------------------------------------------------
LOG = "log.txt"
STATE = "state.pt"  # a running job's resumable state, removed when it finishes
CLAIM = "claim.json"  # a driver's claim on the folder (bench/core/claims.py)
CLAIM_MUTEX = ".claim.lock"
RUNNING_MARKER = "running.json"  # which process runs the job now (`bench status`)
TRACKED = "tracked.json"  # what the tracking sinks have logged of the job
SLURM_JOB = "slurm.json"  # the Slurm job that runs it

# --- a pre-training (pretrain/<backbone>/) ---------------------------------------------------------
CHECKPOINT = "checkpoint.safetensors"
LAST_GOOD = "last_good.safetensors"  # a diverged pre-training's last good weights
SUMMARY = "summary.json"
HISTORY = "history.csv"
DIVERGENCE = "diverged.json"  # why a pre-training diverged, and at which step

# --- a converted import (imports/<backbone>/) ------------------------------------------------------
IMPORT_REPORT = "import.json"

# --- a transfer cell (runs/<cell id>/) -------------------------------------------------------------
RECORD = "record.json"
KEPT_WEIGHTS = "final.safetensors"  # what rebuilds the trained model (transfer/kept.py), when kept
CELL_CKA = "cka.json"  # a full cell's pre-trained vs fine-tuned CKA matrix
PREDICTIONS = "predictions"  # palette PNGs of a few evaluation images, and predictions.json
PREDICTIONS_INDEX = "predictions.json"
EXPLAIN = "explain"  # `bench explain`'s overlays (written without claiming the folder)
FEATURE_CACHE = "feature_cache"  # a frozen encoder's cached features spilled to disk while it runs
IMAGE_CACHE = "image_cache"
TRAIN_SPLIT = "train_split.txt"  # the training images a cell used

# --- the run record --------------------------------------------------------------------------------
RECORD_SCHEMA = 1

# --- a job's status --------------------------------------------------------------------------------
# A record's `status`: the cell ran to the end (OK), its training diverged (DIVERGED), it raised
# (FAILED), or its pre-training failed so it never ran (SKIPPED).
OK, DIVERGED, FAILED, SKIPPED = "ok", "diverged", "failed", "skipped"
RECORD_STATUSES = (OK, DIVERGED, FAILED, SKIPPED)
FINAL_STATUSES = (OK, DIVERGED)  # a record of the current config that a re-run keeps; the others run again
# What `bench status` says of a job without a record: a driver runs it now, it was running when its
# driver died, or it never started.
RUNNING, INTERRUPTED, PENDING = "running", "interrupted", "pending"


def resolved_manifest(results: Path) -> Path:
    return Path(results) / RESOLVED_MANIFEST


def world_folder(results: Path, world_id: str) -> Path:
    """data/synth-<id>/: a generated world, named by its parameters (its fingerprint)."""
    return Path(results) / DATA / f"{WORLD_PREFIX}{world_id[:WORLD_ID_CHARS]}"


def pretrain_folder(results: Path, backbone: str) -> Path:
    return Path(results) / PRETRAIN / backbone


def import_folder(results: Path, backbone: str) -> Path:
    return Path(results) / IMPORTS / backbone


def cell_folder(results: Path, cell_id: str) -> Path:
    return Path(results) / RUNS / cell_id


def record_paths(results: Path):
    """Every cell's record.json under runs/ (those there now)."""
    return sorted(Path(results).glob(f"{RUNS}/*/{RECORD}"))


def job_log_name(rank: int = 0) -> str:
    """A job's log; a data-parallel rank other than 0 keeps its own beside it."""
    return LOG if rank == 0 else f"log.rank{rank}.txt"


def append_log(folder: Path, msg: str, rank: int = 0) -> None:
    """One time-stamped line in the job's log, the one writer of job logs. Opened and closed per
    line: a job logs a handful, and no line is lost in a buffer when the job is killed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / job_log_name(rank), "a") as log:
        log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}\n")

