"""`bench run`: manifest -> generated data -> pre-trained checkpoints -> transfer cells -> leaderboard.

Every stage is idempotent and keyed by a fingerprint of its resolved config, so a re-run (after
a crash, a `kill -9`, or a manifest edit) redoes exactly the work whose inputs changed:
the world is rendered once per parameter set, a pre-training resumes from its snapshot or is
skipped when its checkpoint is current, and a cell whose record matches is skipped.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import sys
import time
from pathlib import Path

from tqdm import tqdm

from bench.report import where, write_reports
from bench.core import results_folder
from bench.core.atomic import remove_temp_files
from bench.core.checkpoint import file_sha256, read_checkpoint_meta
from bench.core.claims import CLAIM_NAME, CLAIMED, Claim, claimed, exclusive_lock, holder, identity, read_claim
from bench.core.errors import UserError, one_line
from bench.core.progress import bar as progress_bar
from bench.executors import Job, make_executor
from bench.core.synth.world import SynthWorld
from bench.study.manifest import Manifest, load_manifest
from bench.study.matrix import expand
from bench.tracking import open_tracking
from bench.core.records import is_finished, read_json, write_json_atomic
from bench.importers.cache import import_backbone
from pretrain.loop import Diverged
from transfer.api import RECORD_NAME, Cell, resolve_cell_config
from transfer.data import publish_splits
from transfer.protocols import PROTOCOLS

SUBMITTED = "submitted"  # what a non-waiting cluster executor returns for a job it queued
DONE_ELSEWHERE = "done elsewhere"  # a cell another driver finished while this one waited for it


def _say(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


def ensure_world(world: SynthWorld, world_id: str, out_dir: Path) -> Path:
    """The generated world for these parameters, rendered on first use (atomically)."""
    from bench.core.synth import render_world

    path = out_dir / "data" / f"synth-{world_id[:12]}"
    if (path / "meta.json").is_file():
        return path
    # Two drivers starting together would both render it and the second publish would fail: the
    # first renders, the other waits on the lock and then finds it there.
    with exclusive_lock(out_dir / "data" / f".synth-{world_id[:12]}.lock") as locked:
        if not (path / "meta.json").is_file():
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


def _pretrain_job(config: dict, out_dir: str, progress: bool, claims: dict | None = None) -> str:
    """One pre-training, under its folder's claim (`claims`: the manifest's executor.claims; None:
    the caller holds the claim, as the Ray executor's driver does without a shared filesystem).
    Returns the checkpoint's path, or CLAIMED when another live driver holds the folder."""
    from bench.study.status import running_marker
    from pretrain.api import run_pretrain

    # Messages go to the job's own log: text written from a worker would tear the progress bars.
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with _claim(out_dir, f"pretrain {config['name']}", claims) as claim:
        if not claim:
            return CLAIMED
        # `bench status` shows the pre-training as running meanwhile
        with running_marker(Path(out_dir)):
            log = functools.partial(_append_log, Path(out_dir))
            if isinstance(claim, Claim) and claim.took_over:
                log(claim.took_over)
            _remove_debris(Path(out_dir), log)
            # Re-checked under the claim: run_pretrain skips a checkpoint another driver finished
            # while this one waited ("up to date, skipped"), so each pre-training runs once.
            return str(run_pretrain(config, Path(out_dir), progress=progress, log=log))


def _transfer_job(config: dict, out_dir: str, progress: bool, claims: dict | None = None) -> str:
    """One cell, under its folder's claim (see `_pretrain_job`): its status, DONE_ELSEWHERE when
    another driver finished it since this driver looked, or CLAIMED when one is running it."""
    import traceback

    from bench.study.status import running_marker
    from transfer.api import run_cell

    with _claim(out_dir, f"cell {Cell(**config['cell']).id}", claims) as claim:
        if not claim:
            return CLAIMED
        if is_finished(Path(out_dir) / RECORD_NAME, config["fingerprint"]):
            return DONE_ELSEWHERE  # finished by another driver between our look and our claim
        if isinstance(claim, Claim) and claim.took_over:
            _append_log(Path(out_dir), claim.took_over)
        _remove_debris(Path(out_dir), functools.partial(_append_log, Path(out_dir)))
        with running_marker(Path(out_dir)):  # `bench status` shows the cell as running meanwhile
            try:
                return run_cell(config, Path(out_dir), progress=progress)["status"]
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 -- recorded, then retried on the next run
                with open(Path(out_dir) / "log.txt", "a") as log:  # the traceback for whoever debugs it
                    log.write(traceback.format_exc())
                write_json_atomic(Path(out_dir) / RECORD_NAME, {
                    "schema": 1, "cell": config["cell"], "fingerprint": config["fingerprint"], "status": "failed",
                    "error": f"{type(exc).__name__}: {one_line(exc)}", "config": config, "ran_by": identity(),
                })
                return "failed"


def _append_log(out_dir: Path, msg: str) -> None:
    """One time-stamped line in the job's `log.txt` (opened per line: a job logs a handful)."""
    with open(out_dir / "log.txt", "a") as log:
        log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}\n")


def _remove_debris(out_dir: Path, log) -> None:
    """Remove what a killed earlier run of this job left half-written: the temp files of atomic
    writes it was making (the finished files they would have replaced are intact). Called once the
    folder is this job's; `explain/` is `bench explain`'s, which does not claim the folder."""
    removed = remove_temp_files(out_dir, skip_dirs=(results_folder.EXPLAIN,), keep_prefixes=(f".{CLAIM_NAME}.",))
    if removed:
        log(f"removed {len(removed)} temp file(s) a killed run left: "
            + ", ".join(str(p.relative_to(out_dir)) for p in removed))


@contextlib.contextmanager
def _claim(out_dir: str, job: str, claims: dict | None):
    """The job folder's claim for the block (falsy when a live other driver holds it); with
    `claims` None, True: the caller claimed the folder on the job's behalf."""
    if claims is None:
        yield True
        return
    with claimed(out_dir, job, **claims) as claim:
        yield claim if claim.acquired else None


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


def run_manifest(path, *, out=None, workers=None, dry_run=False, as_json=False, progress=True,
                 extra_backbones=(), only: set[str] | None = None, executor_overrides: dict | None = None,
                 sets: list[str] | None = None, manifest_only: bool = False, plots: bool = True) -> int:
    """Run a manifest's matrix. `extra_backbones` join the manifest's (`bench submit`); `only`
    restricts the work to those backbones' (display names) pre-trainings and cells (the reports
    cover all records);
    `sets` are `--set KEY.PATH=VALUE` overrides over the file. A dry run checks the real data
    it names (bench/study/dry_run.py), unless `manifest_only`: then the manifest alone, its files and
    folders need not exist yet. `plots`: draw the figures with the reports."""
    if manifest_only and not dry_run:
        raise UserError("--manifest-only checks a manifest without its data: it needs --dry-run")
    m = load_manifest(path, sets, check_files=not manifest_only)
    if extra_backbones:
        m.backbones = [*m.backbones, *extra_backbones]
    selected = [b for b in m.backbones if only is None or b.display_name in only]
    from bench.study.dry_run import data_problems, size_problems
    from bench.study.manifest import format_problems

    # Sizes no encoder can take refuse every run before it starts; the data itself, a dry run's.
    problems = size_problems(m, selected) + (data_problems(m, selected) if dry_run and not manifest_only else [])
    if problems:
        raise UserError(format_problems(path, problems))
    methods = _checkpoint_methods(m, only_existing=manifest_only)
    cells = [c for c in expand(m, methods) if only is None or c.backbone_key in only]
    if dry_run:
        if as_json:
            print(json.dumps([{"id": c.id, **c.as_dict()} for c in cells], indent=2))
        else:
            for c in cells:
                print(c.id)
            print(f"{len(cells)} cells", file=sys.stderr)
        return 0

    out_dir = Path(out or m.out or Path("results") / m.name).resolve()
    t0 = time.perf_counter()

    # Stage 0: foreign checkpoints, converted once into the harness format. First, so that a
    # refused checkpoint stops the run before anything is written. Backbones are keyed by display
    # name from here on: each variant has its own checkpoint.
    checkpoints: dict[str, Path | None] = {b.display_name: b.checkpoint for b in m.backbones}
    for b in selected:
        if b.import_ is not None:
            checkpoints[b.display_name] = import_backbone(b.display_name, b.arch, b.import_, out_dir, log=_say)
    imported = {b.display_name: checkpoints[b.display_name] for b in selected if b.import_ is not None}
    if imported:  # their method label is the format the conversion found
        methods = _checkpoint_methods(m, imported)
        cells = [Cell(**{**c.as_dict(), "method": methods.get(c.backbone_key, c.method)}) for c in cells]

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "manifest.resolved.json", m.resolved_dump())
    executor = make_executor(m.executor, workers=workers or m.workers, out_dir=out_dir, **(executor_overrides or {}))
    tracker = open_tracking(m.tracking, out_dir, m.name, say=_say)  # logs finished jobs' files; never fails one
    try:
        # Rendered only for a manifest that trains or transfers on them.
        worlds = Worlds(m, out_dir, worlds_used(m, selected))
        retries = m.executor.retries
        claims = m.executor.claims.model_dump()  # taken by each job where it runs (a worker, a node)

        # Stage 1: pre-training, one job per backbone that asks for it and has no current checkpoint
        # (checked here: a cluster job only to find it up to date would cost a queue slot).
        from pretrain.api import CHECKPOINT_NAME, is_pretrained, pretrain_fingerprint, resolve_config

        jobs, names = [], []
        for b in selected:
            if b.pretrain is not None:
                world_root, world_id = worlds.of(b.pretrain.world)
                cfg = pretrain_config(b, world_root, world_id)
                pre_dir = out_dir / "pretrain" / b.display_name
                try:
                    current = is_pretrained(pre_dir, pretrain_fingerprint(resolve_config(cfg)))
                except UserError:
                    current = False  # the job reports the problem and blocks only this backbone's cells
                if current:
                    checkpoints[b.display_name] = pre_dir / CHECKPOINT_NAME
                    continue
                jobs.append(Job(_pretrain_job, {"config": cfg, "out_dir": str(pre_dir), "progress": progress,
                                                "claims": claims},
                                name=f"pretrain/{b.display_name}", out_dir=pre_dir,
                                needs=[world_root] if b.pretrain.reads_world else [],
                                resources=pretrain_resources(b, m.executor.resources.model_dump())))
                names.append(b.display_name)
        broken: dict[str, str] = {}
        waiting: set[str] = set()  # submitted to a cluster and not waited for: their cells come later
        claimed_pre: set[str] = set()  # another live driver pre-trains them: their cells are its too
        for i, result, exc in _with_retries(executor, jobs, retries):
            if exc is None and result == CLAIMED:
                claimed_pre.add(names[i])
                _say(_claimed_message(f"pre-training {names[i]}", jobs[i].out_dir) + " (and its cells)")
            elif exc is not None:
                broken[names[i]] = one_line(exc)
                _say(f"pre-training {names[i]} failed: {one_line(exc)}; its cells are skipped")
            elif result == SUBMITTED:
                waiting.add(names[i])
                _say(f"pre-training {names[i]} submitted; its cells follow on a later `bench run`")
            else:
                checkpoints[names[i]] = Path(result)
                _say(pretrain_line(names[i], Path(result)))
                tracker.log(jobs[i].out_dir)
        hashes = {n: file_sha256(p) for n, p in checkpoints.items()
                  if p is not None and n not in broken and n not in waiting and n not in claimed_pre}

        # Stage 2: transfer cells whose record is missing, stale or failed. The few-shot subsets are
        # published first: identical for every backbone, and a size that does not fit fails here.
        datasets = {d.display_name: d for d in m.datasets}
        backbones = {b.display_name: b for b in m.backbones}
        for spec in m.datasets:
            root, _, _ = dataset_data(spec, *worlds.of(spec.world))
            publish_splits(spec.settings(), root, m.transfer.train_sizes, m.transfer.seeds, out_dir,
                           name=spec.display_name)
        todo, current = [], 0
        for cell in cells:
            cell_dir = out_dir / "runs" / cell.id
            key = cell.backbone_key
            if key in waiting or key in claimed_pre:
                continue
            if key in broken:  # a record says why, so a gap in the table is never silent
                write_json_atomic(cell_dir / RECORD_NAME, {
                    "schema": 1, "cell": cell.as_dict(), "fingerprint": None, "status": "skipped",
                    "error": f"pre-training {key} failed: {broken[key]}",
                    "config": {"init": m.transfer.init}})
                continue
            spec = datasets[cell.dataset_key]
            root, data_id, generated = dataset_data(spec, *worlds.of(spec.world))
            config = resolve_cell_config(cell, m.transfer, dataset=spec.geometry(), dataset_root=root,
                                         data_id=data_id, checkpoint=checkpoints[key],
                                         checkpoint_sha256=hashes.get(key),
                                         processes=m.executor.resources.ddp_processes(),
                                         random_init=backbones[key].random_init)
            if generated:  # the world's parameters and controls, for the record (data_id names them already)
                config["world"] = worlds.identities[spec.world]
            if is_finished(cell_dir / RECORD_NAME, config["fingerprint"]):
                current += 1
                continue
            needs = [p for p in (checkpoints[key], root if generated else None) if p is not None]
            todo.append(Job(_transfer_job, {"config": config, "out_dir": str(cell_dir), "progress": progress,
                                            "claims": claims},
                            name=cell.id, out_dir=cell_dir, needs=needs, resources=m.executor.resources.model_dump()))
        behind_claims = sum(c.backbone_key in claimed_pre for c in cells)
        _say(f"{len(cells)} cells: {current} up to date, {len(todo)} to run, "
             f"{sum(c.backbone_key in broken for c in cells)} skipped (failed pre-training)"
             + (f", {behind_claims} left to the driver pre-training their backbone" if behind_claims else ""))
        todo = longest_first(todo)
        statuses = []
        with progress_bar(enabled=progress, total=len(todo), desc="matrix", unit="cell", position=0) as bar:
            for i, status, exc in _with_retries(executor, todo, retries, failed=lambda s: s == "failed"):
                statuses.append("failed" if exc else status)
                tracker.log(todo[i].out_dir)
                if exc is None and status == CLAIMED:
                    _say(_claimed_message(f"cell {todo[i].name}", todo[i].out_dir))
                elif exc is None and status == DONE_ELSEWHERE:
                    _say(f"cell {todo[i].name}: finished by another driver meanwhile")
                elif status != SUBMITTED:  # one line per finished cell, terminal or not
                    _say(cell_line(todo[i].name, todo[i].out_dir, status if exc is None else one_line(exc)))
                bar.update(1)
        tracker.catch_up()  # jobs finished earlier or elsewhere, and what a sink missed
        pending = [s for s in statuses if s == SUBMITTED]
        if pending or waiting:  # a Slurm driver that does not wait: the records will say when they are done
            print(f"{len(pending)} cells and {len(waiting)} pre-trainings submitted; `bench status {out_dir}` "
                  f"follows them, `bench run` again collects them and submits what they unblock")
            return 0

        table = write_reports(out_dir, plots=plots)
        print(table["markdown"])
        print(f"\n{where(table)}\nrecords:     {out_dir / 'runs'}/*/record.json"
              f"\nelapsed:     {time.perf_counter() - t0:.1f}s")
        shared = _shared_folder_summary(statuses, claimed_pre, behind_claims)
        if shared:
            print(shared)
        return 0 if not broken and all(s in ("ok", CLAIMED, DONE_ELSEWHERE) for s in statuses) else 1

    finally:  # a Ray instance this run started stops with it
        if hasattr(executor, "close"):
            executor.close()


def longest_first(jobs: list[Job]) -> list[Job]:
    """Cells in the order that leaves workers least idle at the end of the stage: the costly ones
    first (full, then frozen, then linear: PROTOCOLS's order; more sweep candidates first within
    a protocol), the cheap linear probes last to fill the gaps. Stable: the matrix's order otherwise."""
    def cost_rank(job: Job) -> tuple[int, int]:
        config = job.kwargs["config"]
        return PROTOCOLS.index(config["cell"]["protocol"]), -len(config.get("sweep") or [{}])

    return sorted(jobs, key=cost_rank)


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


def cell_line(cell_id: str, cell_dir: Path, outcome: str) -> str:
    """`cell ID: ok mIoU 41.23 (12s)`, or the outcome and its reason, from the cell's record."""
    record = read_json(Path(cell_dir) / RECORD_NAME) or {}
    metrics, wall = record.get("metrics"), (record.get("timings") or {}).get("wall_s")
    took = f" ({wall:.0f}s)" if isinstance(wall, (int, float)) else ""
    if outcome == "ok" and metrics:
        return f"cell {cell_id}: ok mIoU {100 * metrics['miou']:.2f}{took}"
    reason = record.get("error") if outcome in ("failed", "diverged") else None
    return f"cell {cell_id}: {outcome}" + (f" ({reason})" if reason else "")


def pretrain_line(name: str, checkpoint: Path) -> str:
    """`pre-trained NAME: final loss 0.4123 (52s) -> CHECKPOINT`, from its summary.json."""
    summary = read_json(checkpoint.parent / "summary.json") or {}
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
