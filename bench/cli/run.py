"""`bench run MANIFEST`: the whole matrix of a manifest (bench.study.runner)."""

from __future__ import annotations

from bench.cli.common import plots_parent, positive_int, progress_parent
from bench.core.errors import UserError


def add_parser(sub) -> None:
    r = sub.add_parser("run", help="run a benchmark matrix from a manifest", parents=[progress_parent(), plots_parent()],
                       description=
                       "Render data, pre-train, transfer every matrix cell, and write the leaderboard. "
                       "Finished cells (same config fingerprint) are skipped, so re-running resumes.")
    r.add_argument("manifest", help="manifest YAML file (docs/manifest.md)")
    r.add_argument("--out", help="results folder (default: the manifest's `out`, else results/<name>)")
    r.add_argument("--workers", type=positive_int, help="cells run in this many parallel processes (default: manifest's `workers`)")
    r.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", dest="sets",
                   help="override a manifest value without editing the file, e.g. transfer.steps=500 or "
                   "backbones.depth.pretrain.steps=2000 (a list entry by its name); the value is YAML; repeatable; "
                   "recorded in manifest.resolved.json")
    r.add_argument("--dry-run", action="store_true", help="check the manifest and the data it names (dataset "
                   "folders list, few-shot sizes fit, pre-training data is there), list the cells and exit; "
                   "nothing is written or rendered")
    r.add_argument("--manifest-only", action="store_true", help="with --dry-run: check the manifest alone, not "
                   "its data (for a manifest written before its data exists)")
    r.add_argument("--json", action="store_true", help="with --dry-run: print the cells as a JSON list")
    ex = r.add_argument_group("executor (default: the manifest's `executor:` section; docs/scaling-out.md)")
    ex.add_argument("--executor", choices=["local", "ray", "slurm"], help="where jobs run")
    ex.add_argument("--ray-address", help="ray: auto or HOST:PORT joins a running cluster (default: a local Ray)")
    ex.add_argument("--slurm-partition", help="slurm: partition")
    ex.add_argument("--slurm-account", help="slurm: account")
    ex.add_argument("--slurm-time", type=int, metavar="MINUTES", help="slurm: time limit per job")
    ex.add_argument("--no-wait", action="store_true", help="slurm: submit and exit; `bench status` and a later "
                    "`bench run` pick up the results")
    r.set_defaults(fn=main)


def main(args) -> int:
    from bench.study.runner import run_manifest

    if args.json and not args.dry_run:  # else the whole matrix would run, its cells never printed
        raise UserError("--json only prints a --dry-run's cells; add --dry-run, or drop --json to run the matrix")

    slurm = {"partition": args.slurm_partition, "account": args.slurm_account, "time_min": args.slurm_time,
             "wait": False if args.no_wait else None}
    overrides = {"kind": args.executor, "ray_address": args.ray_address, "slurm": slurm}
    return run_manifest(args.manifest, out=args.out, workers=args.workers, dry_run=args.dry_run,
                        as_json=args.json, progress=args.progress, executor_overrides=overrides, sets=args.sets,
                        manifest_only=args.manifest_only, plots=args.plots)
