"""`bench status RESULTS`: where a matrix stands, from its results folder alone (bench.study.status)."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub) -> None:
    st = sub.add_parser("status", help="done / running / failed / skipped / pending cells of a results folder",
                        description="Summarises a matrix from its results folder alone (records, running markers, "
                        "in-cell states, Slurm job states, claims held by drivers): works while `bench run` runs, "
                        "or after a Slurm driver exited.")
    st.add_argument("results_dir", help="results folder of a `bench run`")
    st.add_argument("--all", action="store_true", help="list every cell, not only the ones needing attention")
    st.add_argument("--json", action="store_true", help="print the summary as JSON")
    st.set_defaults(fn=main)


def main(args) -> int:
    from bench.study.status import claims_held, format_claims, format_status, matrix_status

    summary = matrix_status(Path(args.results_dir))
    claims = claims_held(Path(args.results_dir))  # its own section: drivers sharing the folder
    print(json.dumps({**summary, "claims": claims}, indent=2) if args.json
          else format_status(summary, verbose=args.all) + "\n" + format_claims(claims))
    return 0
