"""`bench run`: manifest -> generated data -> pre-trained checkpoints -> transfer cells -> leaderboard.

Every stage is idempotent and keyed by a fingerprint of its resolved config, so a re-run (after
a crash, a `kill -9`, or a manifest edit) redoes exactly the work whose inputs changed:
the world is rendered once per parameter set, a pre-training resumes from its snapshot or is
skipped when its checkpoint is current, and a cell whose record matches is skipped.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from bench.core import results_folder as rf
from bench.core.checkpoint import file_sha256, read_checkpoint_meta
from bench.core.claims import CLAIMED, exclusive_lock, holder, read_claim
from bench.core.errors import UserError, one_line
from bench.core.progress import bar as progress_bar
from bench.core.records import is_finished, read_json, write_json_atomic, write_record
from bench.core.synth.world import SynthWorld
from bench.executors import Job, make_executor
from bench.importers.cache import import_backbone
from bench.report import where, write_reports
from bench.study.jobs import DONE_ELSEWHERE, pretrain_job, transfer_job
from bench.study.manifest import Manifest, load_manifest
from bench.study.matrix import expand
from bench.tracking import open_tracking
from pretrain.loop import Diverged
from transfer.api import Cell, resolve_cell_config
from transfer.data import publish_splits
from transfer.protocols import PROTOCOLS

SUBMITTED = "submitted"  # what a non-waiting cluster executor returns for a job it queued


def _say(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


def ensure_world(world: SynthWorld, world_id: str, out_dir: Path) -> Path:
    """The generated world for these parameters, rendered on first use (atomically)."""
    from bench.core.synth import render_world

    path = rf.world_folder(out_dir, world_id)
    if (path / rf.WORLD_META).is_file():
        return path
    # Two drivers starting together would both render it and the second publish would fail: the
    # first renders, the other waits on the lock and then finds it there.
    with exclusive_lock(path.with_name(f".{path.name}.lock")) as locked:
        if not (path / rf.WORLD_META).is_file():
            # a render killed before it published left its temp folder (render_world's `.NAME.tmp-*`);
            # without a working lock it may be a live render's: left alone
            for debris in path.parent.glob(f".{path.name}.tmp-*") if locked else ():
                shutil.rmtree(debris, ignore_errors=True)
            t0 = time.perf_counter()
            render_world(path, **world.model_dump())
            _say(f"rendered world {path} in {time.perf_counter() - t0:.1f}s")
    return path


class Worlds:
    """The generated worlds a run reads: the base world (`data.synth`) and the named ones of
    `data.worlds` that an entry asks for, each rendered once on first use into
    RESULTS/data/synth-<id>/ and named by its parameters (its id), so a moved results folder
    keeps every fingerprint."""

    def __init__(self, m: Manifest, out_dir: Path, names):
        worlds = {name: m.data.world(name) for name in names}
        self.ids = {name: world.fingerprint() for name, world in worlds.items()}
        self.roots = {name: ensure_world(world, self.ids[name], out_dir) for name, world in worlds.items()}
        self.identities = {name: world.identity() for name, world in worlds.items()}

    def of(self, name: str | None) -> tuple[Path | None, str | None]:
        """(folder, id) of a world the run rendered (None, None: one it did not need)."""
        return self.roots.get(name), self.ids.get(name)


def dataset_data(spec, world_root: Path | None, world_id: str | None) -> tuple[Path | None, str, bool]:
    """(root, data_id, generated) of one manifest dataset entry: its own folder, named by its
    path, or its generated world (`world_root`, `world_id`: the one it names), named by its
    parameters. The one place an entry -- a variant too -- finds its data."""
    if spec.root is not None:
        return spec.root, str(spec.root), False
    return world_root, world_id, True


def worlds_used(m: Manifest, backbones) -> list[str | None]:
    """The worlds (None: the base world; else a `data.worlds` name) that a dataset of the
    matrix, or a pre-training of `backbones`, reads, in manifest order."""
    names = [d.world for d in m.datasets if d.reads_world]
    names += [b.pretrain.world for b in backbones if b.pretrain is not None and b.pretrain.reads_world]
    return list(dict.fromkeys(names))


def uses_world(m: Manifest, backbones) -> bool:
    """Whether a dataset of the matrix, or a pre-training of `backbones`, reads a generated world."""
    return bool(worlds_used(m, backbones))


def pretrain_config(backbone, world_root: Path | None, world_id: str | None) -> dict:
    """The pre-training's config; `world_root`/`world_id` are the world it reads (unused for real data)."""
    spec = backbone.pretrain.model_dump(mode="json")
    root = spec.pop("root")
    spec.pop("world", None)  # which world is `data_id`: its parameters, not its name
    if spec.get("processes") is None and spec.get("gpus", 0) > 1:  # one data-parallel rank per GPU
        spec["processes"] = spec["gpus"]
    # The generated world is named by its parameters, so moving the results folder (and with it
    # the world) keeps every pre-training's fingerprint; a real dataset is named by its path.
    return {"name": backbone.display_name, "arch": backbone.arch, **spec,
            "root": str(root or world_root), "data_id": str(root) if root else world_id}


def pretrain_resources(backbone, executor_resources: dict) -> dict:
    """What a pre-training job asks its executor for: the executor's resources, with the GPUs
    its `pretrain.gpus` names (when set) and no DDP ranks of the cells' (`processes` is theirs)."""
    out = {k: v for k, v in executor_resources.items() if k != "processes"}
    if backbone.pretrain.gpus:
        out["gpus"] = backbone.pretrain.gpus
    return out


def _claimed_message(name: str, out_dir: Path) -> str:
    info = read_claim(out_dir)
    who = f" by {holder(info)} since {info.get('started', '?')}" if info else ""
    return f"{name}: claimed elsewhere{who}; skipped by this driver"


def _checkpoint_methods(m: Manifest, imported: dict[str, Path] | None = None,
                        only_existing: bool = False) -> dict[str, str]:
    """Checkpoints (given or imported) carry their own method label, by backbone display name
    (`only_existing`: of those already there; the others keep the manifest's label)."""
    methods = {}
    for b in m.backbones:
        path = b.checkpoint or (imported or {}).get(b.display_name)
        if path is not None and not (only_existing and not Path(path).is_file()):
            meta = read_checkpoint_meta(path)
            if meta["arch"] != b.arch:
                raise UserError(f"{path}: checkpoint arch {meta['arch']!r} but backbone "
                                f"{b.display_name!r} says arch {b.arch!r}")
            methods[b.display_name] = meta["method"]
    return methods


# ---------------------------------------------------------------- the run, stage by stage

def run_manifest(path, *, out=None, workers=None, dry_run=False, as_json=False, progress=True,
                 extra_backbones=(), only: set[str] | None = None, executor_overrides: dict | None = None,
                 sets: list[str] | None = None, manifest_only: bool = False, plots: bool = True) -> int:
    """Run a manifest's matrix. `extra_backbones` join the manifest's (`bench submit`); `only`
    restricts the work to those backbones' (display names) pre-trainings and cells (the reports
    cover all records); `sets` are `--set KEY.PATH=VALUE` overrides over the file. A dry run checks
    the real data it names (bench/study/dry_run.py), unless `manifest_only`: then the manifest
    alone, its files and folders need not exist yet. `plots`: draw the figures with the reports."""
    if manifest_only and not dry_run:
        raise UserError("--manifest-only checks a manifest without its data: it needs --dry-run")
    m = load_manifest(path, sets, check_files=not manifest_only)
    m.backbones = [*m.backbones, *extra_backbones]
    selected = [b for b in m.backbones if only is None or b.display_name in only]
    _refuse_problems(path, m, selected, check_data=dry_run and not manifest_only)
    cells = [c for c in expand(m, _checkpoint_methods(m, only_existing=manifest_only))
             if only is None or c.backbone_key in only]
    if dry_run:
        return _print_cells(cells, as_json)
    run = Run(m, Path(out or m.out or Path("results") / m.name).resolve(), progress)
    checkpoints, cells = import_foreign(run, selected, cells)  # stage 0: may refuse; writes nothing else
    run.open(workers, executor_overrides)
    try:
        worlds = Worlds(m, run.out_dir, worlds_used(m, selected))  # only those a dataset or pre-training reads
        pretrained = pretrain(run, selected, checkpoints, worlds)  # stage 1
        cells_run = transfer(run, cells, pretrained, worlds)  # stage 2
        return report(run, pretrained, cells_run, plots)
    finally:
        run.close()


class Run:
    """One `bench run`: its manifest, results folder, executor, tracker and clock."""

    def __init__(self, m: Manifest, out_dir: Path, progress: bool):
        self.m, self.out_dir, self.progress, self.t0 = m, out_dir, progress, time.perf_counter()
        self.executor = self.tracker = None
        self.claims = m.executor.claims.model_dump()  # taken by each job where it runs (a worker, a node)

    def open(self, workers: int | None, executor_overrides: dict | None) -> None:
        """The folder, its resolved manifest, the executor and the tracker (which logs finished jobs'
        files and never fails one)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(rf.resolved_manifest(self.out_dir), self.m.resolved_dump())
        self.executor = make_executor(self.m.executor, workers=workers or self.m.workers, out_dir=self.out_dir,
                                      **(executor_overrides or {}))
        self.tracker = open_tracking(self.m.tracking, self.out_dir, self.m.name, say=_say)

    def jobs(self, jobs: list[Job], failed=lambda result: False):
        """(job index, result, exception) as the executor finishes them, with the manifest's retries."""
        return _with_retries(self.executor, jobs, self.m.executor.retries, failed)

    def close(self) -> None:
        if hasattr(self.executor, "close"):  # a pool's workers, a Ray instance this run started
            self.executor.close()


def _refuse_problems(path, m: Manifest, selected, check_data: bool) -> None:
    """Sizes no encoder can take refuse every run before it starts; the data itself, a dry run's."""
    from bench.study.dry_run import data_problems, size_problems
    from bench.study.manifest import format_problems

    problems = size_problems(m, selected) + (data_problems(m, selected) if check_data else [])
    if problems:
        raise UserError(format_problems(path, problems))


def _print_cells(cells: list[Cell], as_json: bool) -> int:
    if as_json:
        print(json.dumps([{"id": c.id, **c.as_dict()} for c in cells], indent=2))
    else:
        for c in cells:
            print(c.id)
        print(f"{len(cells)} cells", file=sys.stderr)
    return 0


def import_foreign(run: Run, selected, cells: list[Cell]) -> tuple[dict[str, Path | None], list[Cell]]:
    """Stage 0: foreign checkpoints, converted once into the harness format. First, so that a
    refused checkpoint stops the run before anything is written. Returns every backbone's given or
    converted checkpoint (None: none yet, or random), keyed by display name from here on (each
    variant has its own), and the cells, an import's relabelled with the method its format names."""
    checkpoints: dict[str, Path | None] = {b.display_name: b.checkpoint for b in run.m.backbones}
    imported = {b.display_name: import_backbone(b.display_name, b.arch, b.import_, run.out_dir, log=_say)
                for b in selected if b.import_ is not None}
    if imported:
        checkpoints.update(imported)
        methods = _checkpoint_methods(run.m, imported)
        cells = [Cell(**{**c.as_dict(), "method": methods.get(c.backbone_key, c.method)}) for c in cells]
    return checkpoints, cells


@dataclass
class Pretrained:
    """What stage 1 hands stage 2: every backbone's checkpoint (None: random initialisation), and
    the backbones whose cells cannot run now, by display name."""

    checkpoints: dict[str, Path | None]
    failed: dict[str, str] = field(default_factory=dict)  # why: their cells get a `skipped` record
    submitted: set[str] = field(default_factory=set)  # queued on a cluster: their cells come on a later run
    claimed: set[str] = field(default_factory=set)  # another live driver pre-trains them: its cells too
    _hashes: dict[str, str] = field(default_factory=dict)

    def elsewhere(self, key: str) -> bool:
        """Its cells are left to a later run or another driver."""
        return key in self.submitted or key in self.claimed

    def sha256(self, key: str) -> str | None:
        """The checkpoint's hash (read once), which every fingerprint of its cells includes."""
        path = self.checkpoints.get(key)
        if path is None or key in self.failed or self.elsewhere(key):
            return None
        if key not in self._hashes:
            self._hashes[key] = file_sha256(path)
        return self._hashes[key]


def pretrain(run: Run, selected, checkpoints: dict[str, Path | None], worlds: "Worlds") -> Pretrained:
    """Stage 1: one job per backbone that pre-trains and has no current checkpoint (checked here: a
    cluster job only to find it up to date would cost a queue slot)."""
    out = Pretrained(dict(checkpoints))
    jobs, names = [], []
    for b in selected:
        if b.pretrain is None:
            continue
        job = _pretrain_job_of(run, b, worlds)
        if isinstance(job, Path):
            out.checkpoints[b.display_name] = job
        else:
            jobs.append(job)
            names.append(b.display_name)
    for i, result, exc in run.jobs(jobs):
        _pretrained(run, out, names[i], jobs[i], result, exc)
    return out


def _pretrain_job_of(run: Run, backbone, worlds: "Worlds") -> Job | Path:
    """The backbone's pre-training job, or its checkpoint when that is current."""
    from pretrain.api import is_pretrained, pretrain_fingerprint, resolve_config

    world_root, world_id = worlds.of(backbone.pretrain.world)
    config = pretrain_config(backbone, world_root, world_id)
    folder = rf.pretrain_folder(run.out_dir, backbone.display_name)
    try:
        current = is_pretrained(folder, pretrain_fingerprint(resolve_config(config)))
    except UserError:
        current = False  # the job reports the problem and blocks only this backbone's cells
    if current:
        return folder / rf.CHECKPOINT
    return Job(pretrain_job, {"config": config, "out_dir": str(folder), "progress": run.progress, "claims": run.claims},
               name=f"{rf.PRETRAIN}/{backbone.display_name}", out_dir=folder,
               needs=[world_root] if backbone.pretrain.reads_world else [],
               resources=pretrain_resources(backbone, run.m.executor.resources.model_dump()))


def _pretrained(run: Run, out: Pretrained, name: str, job: Job, result, exc) -> None:
    """One finished pre-training job into stage 1's outcome, with a line saying what became of it."""
    if exc is None and result == CLAIMED:
        out.claimed.add(name)
        _say(_claimed_message(f"pre-training {name}", job.out_dir) + " (and its cells)")
    elif exc is not None:
        out.failed[name] = one_line(exc)
        _say(f"pre-training {name} failed: {one_line(exc)}; its cells are skipped")
    elif result == SUBMITTED:
        out.submitted.add(name)
        _say(f"pre-training {name} submitted; its cells follow on a later `bench run`")
    else:
        out.checkpoints[name] = Path(result)
        _say(pretrain_line(name, Path(result)))
        run.tracker.log(job.out_dir)


@dataclass
class CellsRun:
    """What stage 2 did: each job's last status (one per cell it ran or submitted), and the cells it
    left to the driver pre-training their backbone elsewhere."""

    statuses: list[str]
    behind_claims: int


def transfer(run: Run, cells: list[Cell], pretrained: Pretrained, worlds: "Worlds") -> CellsRun:
    """Stage 2: the transfer cells whose record is missing, stale or failed. The few-shot subsets are
    published first: identical for every backbone, and a size that does not fit fails here."""
    m = run.m
    for spec in m.datasets:
        root, _, _ = dataset_data(spec, *worlds.of(spec.world))
        publish_splits(spec.settings(), root, m.transfer.train_sizes, m.transfer.seeds, run.out_dir,
                       name=spec.display_name)
    todo, current = [], 0
    for cell in cells:
        job = _cell_job_of(run, cell, pretrained, worlds)
        current += job == "current"
        if isinstance(job, Job):
            todo.append(job)
    behind_claims = sum(c.backbone_key in pretrained.claimed for c in cells)
    _say(f"{len(cells)} cells: {current} up to date, {len(todo)} to run, "
         f"{sum(c.backbone_key in pretrained.failed for c in cells)} skipped (failed pre-training)"
         + (f", {behind_claims} left to the driver pre-training their backbone" if behind_claims else ""))
    statuses = []
    todo = longest_first(todo)
    with progress_bar(enabled=run.progress, total=len(todo), desc="matrix", unit="cell", position=0) as bar:
        for i, status, exc in run.jobs(todo, failed=lambda s: s == rf.FAILED):
            statuses.append(rf.FAILED if exc else status)
            run.tracker.log(todo[i].out_dir)
            _say_cell(todo[i], status, exc)
            bar.update(1)
    run.tracker.catch_up()  # jobs finished earlier or elsewhere, and what a sink missed
    return CellsRun(statuses, behind_claims)


def _cell_job_of(run: Run, cell: Cell, pretrained: Pretrained, worlds: "Worlds") -> Job | str | None:
    """The cell's job; "current" when its record is up to date; None when it cannot run now (its
    pre-training failed, which a `skipped` record says, or is left to a later run or another driver)."""
    m, key = run.m, cell.backbone_key
    folder = rf.cell_folder(run.out_dir, cell.id)
    if pretrained.elsewhere(key):
        return None
    if key in pretrained.failed:  # a record says why, so a gap in the table is never silent
        write_record(folder, {"cell": cell.as_dict(), "fingerprint": None, "status": rf.SKIPPED,
                                 "error": f"pre-training {key} failed: {pretrained.failed[key]}",
                                 "config": {"init": m.transfer.init}})
        return None
    spec = next(d for d in m.datasets if d.display_name == cell.dataset_key)
    root, data_id, generated = dataset_data(spec, *worlds.of(spec.world))
    checkpoint = pretrained.checkpoints[key]
    config = resolve_cell_config(cell, m.transfer, dataset=spec.geometry(), dataset_root=root, data_id=data_id,
                                 checkpoint=checkpoint, checkpoint_sha256=pretrained.sha256(key),
                                 processes=m.executor.resources.ddp_processes(),
                                 random_init=next(b for b in m.backbones if b.display_name == key).random_init)
    if generated:  # the world's parameters and controls, for the record (data_id names them already)
        config["world"] = worlds.identities[spec.world]
    if is_finished(folder / rf.RECORD, config["fingerprint"]):
        return "current"
    needs = [p for p in (checkpoint, root if generated else None) if p is not None]
    return Job(transfer_job, {"config": config, "out_dir": str(folder), "progress": run.progress, "claims": run.claims},
               name=cell.id, out_dir=folder, needs=needs, resources=m.executor.resources.model_dump())


def _say_cell(job: Job, status, exc) -> None:
    """One line per finished cell, terminal or not (none for one only submitted)."""
    if exc is None and status == CLAIMED:
        _say(_claimed_message(f"cell {job.name}", job.out_dir))
    elif exc is None and status == DONE_ELSEWHERE:
        _say(f"cell {job.name}: finished by another driver meanwhile")
    elif status != SUBMITTED:
        _say(cell_line(job.name, job.out_dir, status if exc is None else one_line(exc)))


def report(run: Run, pretrained: Pretrained, cells_run: CellsRun, plots: bool) -> int:
    """The reports, where they are, and the exit status: 1 when a cell ended other than ok or a
    pre-training failed. A driver that submitted jobs and does not wait says so instead."""
    statuses = cells_run.statuses
    pending = statuses.count(SUBMITTED)
    if pending or pretrained.submitted:  # a Slurm driver that does not wait: the records will say when done
        print(f"{pending} cells and {len(pretrained.submitted)} pre-trainings submitted; `bench status "
              f"{run.out_dir}` follows them, `bench run` again collects them and submits what they unblock")
        return 0
    table = write_reports(run.out_dir, plots=plots)
    print(table["markdown"])
    print(f"\n{where(table)}\nrecords:     {run.out_dir / rf.RUNS}/*/{rf.RECORD}"
          f"\nelapsed:     {time.perf_counter() - run.t0:.1f}s")
    shared = _shared_folder_summary(statuses, pretrained.claimed, cells_run.behind_claims)
    if shared:
        print(shared)
    return 0 if not pretrained.failed and all(s in (rf.OK, CLAIMED, DONE_ELSEWHERE) for s in statuses) else 1


def _shared_folder_summary(statuses: list[str], claimed_pre: set[str], behind_claims: int) -> str | None:
    """What other drivers of the same results folder did instead of this one (None: nothing)."""
    elsewhere = statuses.count(CLAIMED)
    done = statuses.count(DONE_ELSEWHERE)
    if not (elsewhere or done or claimed_pre):
        return None
    ran = len(statuses) - elsewhere - done
    return (f"shared:      {ran} cells run by this driver, {elsewhere} claimed elsewhere, {done} finished "
            f"elsewhere meanwhile; {len(claimed_pre)} pre-trainings claimed elsewhere "
            f"(with {behind_claims} cells)")


def longest_first(jobs: list[Job]) -> list[Job]:
    """Cells in the order that leaves workers least idle at the end of the stage: the costly ones
    first (full, then frozen, then linear: PROTOCOLS's order; more sweep candidates first within
    a protocol), the cheap linear probes last to fill the gaps. Stable: the matrix's order otherwise."""
    def cost_rank(job: Job) -> tuple[int, int]:
        config = job.kwargs["config"]
        return PROTOCOLS.index(config["cell"]["protocol"]), -len(config.get("sweep") or [{}])

    return sorted(jobs, key=cost_rank)


def cell_line(cell_id: str, cell_dir: Path, outcome: str) -> str:
    """`cell ID: ok mIoU 41.23 (12s)`, or the outcome and its reason, from the cell's record."""
    record = read_json(Path(cell_dir) / rf.RECORD) or {}
    metrics, wall = record.get("metrics"), (record.get("timings") or {}).get("wall_s")
    took = f" ({wall:.0f}s)" if isinstance(wall, (int, float)) else ""
    if outcome == rf.OK and metrics:
        return f"cell {cell_id}: ok mIoU {100 * metrics['miou']:.2f}{took}"
    reason = record.get("error") if outcome in (rf.FAILED, rf.DIVERGED) else None
    return f"cell {cell_id}: {outcome}" + (f" ({reason})" if reason else "")


def pretrain_line(name: str, checkpoint: Path) -> str:
    """`pre-trained NAME: final loss 0.4123 (52s) -> CHECKPOINT`, from its summary.json."""
    summary = read_json(checkpoint.parent / rf.SUMMARY) or {}
    loss, wall = summary.get("final_loss"), summary.get("wall_s")
    facts = [f"final loss {loss:.4f}" if isinstance(loss, (int, float)) else None,
             f"({wall:.0f}s)" if isinstance(wall, (int, float)) else None, f"-> {checkpoint}"]
    return f"pre-trained {name}: " + " ".join(f for f in facts if f)


def _with_retries(executor, jobs: list[Job], retries: int, failed=lambda result: False):
    """`executor.run`, re-running each job that raised (or whose result `failed` says so) up to
    `retries` more times; yields each job's last outcome once."""
    remaining = list(range(len(jobs)))
    for attempt in range(retries + 1):
        again = []
        for k, result, exc in executor.run([jobs[i] for i in remaining]):
            i = remaining[k]
            deterministic = isinstance(exc, (UserError, Diverged))  # the same input fails the same way
            if (exc is not None or failed(result)) and not deterministic and attempt < retries:
                _say(f"{jobs[i].name}: attempt {attempt + 1} failed ({one_line(exc) if exc else result}); retrying")
                again.append(i)
            else:
                yield i, result, exc
        remaining = again
        if not remaining:
            return
