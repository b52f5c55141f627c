"""`bench aggregate RESULTS`: leaderboards, plots and the report from run records (bench.report.aggregate)."""

from __future__ import annotations

from pathlib import Path

from bench.cli.common import plots_parent


def add_parser(sub) -> None:
    a = sub.add_parser("aggregate", help="rebuild leaderboards, plots and the report from run records",
                       parents=[plots_parent()], description=
                       "Reads RESULTS_DIR/runs/*/record.json only and writes leaderboard.csv/.md (mean, std, 95% "
                       "Student-t CI, rank, difference to a baseline), per_class.csv, failures.csv, tables/ (the "
                       "papers' layout, Markdown and LaTeX), plots/ and report.html.")
    a.add_argument("results_dir", help="results folder of a `bench run`")
    a.add_argument("--baseline", help="backbone to compare every row with, by display name or NAME (a comparison without it uses "
                        "the one backbone of its NAME there; default: the manifest's first)")
    a.add_argument("--compare", metavar="FILE.csv",
                   help="published numbers (columns backbone,dataset,protocol,decoder,train_size,metric,published,"
                        "source; e.g. configs/paper/*.csv): writes tables/compare_<stem>.md/.tex with ours, "
                        "published, difference (ours - published) and source; unmatched rows are listed as not run")
    a.set_defaults(fn=main)


def main(args) -> int:
    from bench.report.aggregate import where, write_reports

    table = write_reports(Path(args.results_dir), baseline=args.baseline, plots=args.plots,
                          compare=args.compare)
    print(table["markdown"])
    print(f"\n{where(table)}")
    if args.compare:
        print(f"compare:     {Path(args.results_dir) / 'tables' / f'compare_{Path(args.compare).stem}.md'}")
    return 0
