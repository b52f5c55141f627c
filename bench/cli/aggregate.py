"""`bench aggregate RESULTS`: leaderboards, plots and the report from run records (bench.aggregate)."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    a = sub.add_parser("aggregate", help="rebuild leaderboards, plots and the report from run records", description=
                       "Reads RESULTS_DIR/runs/*/record.json only and writes leaderboard.csv/.md (mean, std, 95% "
                       "Student-t CI, rank, difference to a baseline), per_class.csv, failures.csv, plots/ and "
                       "report.html.")
    a.add_argument("results_dir", help="results folder of a `bench run`")
    a.add_argument("--baseline", help="backbone to compare every row with (default: the manifest's first)")
    a.set_defaults(fn=main)


def main(args) -> int:
    from bench.aggregate import where, write_reports

    table = write_reports(Path(args.results_dir), baseline=args.baseline)
    print(table["markdown"])
    print(f"\n{where(table)}")
    return 0
