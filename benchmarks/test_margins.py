"""Margins of the test suite's numeric verdicts at 1 and 2 torch threads, as one Markdown table.

A test whose verdict rests on a number (a loss after a few training steps, a warp error, a
fraction of the run spent waiting) asserts it through tests/margins.py (`assert_below`,
`assert_above`), which, with BENCH_MARGIN_LOG set, appends one JSON line per assert. This script
runs pytest on every test file that uses tests/margins.py (or the files given), once per thread
count (BENCH_TEST_THREADS, see tests/conftest.py), each file in a process of its own so that a
test that sets the thread count itself cannot leak it into the next file; then prints

    test | what | observed @1 | observed @2 | bound | margin @1 | margin @2

with margin = |observed - bound| / |bound|, and exits 1 if any margin is below --min-margin
(default 5 %), an assert failed, a verdict was logged at one thread count and not the other, ran
at another thread count than asked, or pytest failed. A bound taken from the run itself (e.g.
0.9 x the loss before training) can differ between thread counts: both are shown then.

    .venv/bin/python benchmarks/test_margins.py                            # every file using tests/margins.py
    .venv/bin/python benchmarks/test_margins.py tests/test_geometry.py     # some files
    .venv/bin/python benchmarks/test_margins.py --threads 1,2,4 -k video   # other thread counts, a -k filter
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
USES = "tests.margins import"


def margin_files() -> list[Path]:
    """The test files that assert through tests/margins.py."""
    return sorted(p for p in (ROOT / "tests").glob("test_*.py") if USES in p.read_text())


def run(files: list[Path], threads: int, extra: list[str]) -> tuple[list[dict], list[str]]:
    """Each file's logged asserts at `threads` torch threads, and the files whose pytest failed."""
    rows, failed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "margins.jsonl"
        env = {**os.environ, "BENCH_TEST_THREADS": str(threads), "BENCH_MARGIN_LOG": str(log),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        for path in files:
            name = path.relative_to(ROOT)
            print(f"[{threads} thread{'s' * (threads > 1)}] {name}", file=sys.stderr, flush=True)
            code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(name), *extra],
                                   cwd=ROOT, env=env, stdout=sys.stderr)
            if code not in (0, 5):  # 5: nothing collected (a -k filter)
                failed.append(f"{name} (exit {code} at {threads} threads)")
        if log.exists():
            rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return rows, failed


def keyed(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """Rows by (test id, what); a test asserting the same `what` twice gets #2, #3, ..."""
    out: dict[tuple[str, str], dict] = {}
    for row in rows:
        test = (row["test"] or "?").rsplit(" (", 1)[0]  # PYTEST_CURRENT_TEST ends in " (call)"
        key, n = (test, row["what"]), 1
        while key in out:
            n += 1
            key = (test, f"{row['what']} #{n}")
        out[key] = row
    return out


def _num(value) -> str:
    return "—" if value is None else f"{value:.4g}"


def _pct(row: dict | None) -> str:
    if row is None:
        return "missing"
    return "n/a (bound 0)" if row["margin"] is None else f"{100 * row['margin']:.1f} %"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="test files (default: every file using tests/margins.py)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--min-margin", type=float, default=0.05, help="smallest margin that passes (default 0.05)")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression")
    args = parser.parse_args(argv)
    files = [p.resolve() for p in args.files] or margin_files()
    counts = [int(t) for t in args.threads.split(",")]
    extra = ["-k", args.keyword] if args.keyword else []

    runs, problems = {}, []
    for n in counts:
        rows, failed = run(files, n, extra)
        runs[n] = keyed(rows)
        problems += failed
    keys = list(dict.fromkeys(k for n in counts for k in runs[n]))

    head = ["test", "what", *[f"observed @{n}" for n in counts], "bound", *[f"margin @{n}" for n in counts]]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for key in keys:
        got = [runs[n].get(key) for n in counts]
        bounds = list(dict.fromkeys(_num(r["bound"]) for r in got if r is not None))
        test = key[0].replace("tests/", "", 1)
        print("| " + " | ".join([f"`{test}`", key[1], *[_num(r and r["observed"]) for r in got], " / ".join(bounds),
                                 *[_pct(r) for r in got]]) + " |")
        for n, r in zip(counts, got):
            if r is None:
                problems.append(f"{key[0]}: {key[1]}: not logged at {n} threads")
            elif not r["passed"]:
                problems.append(f"{key[0]}: {key[1]}: failed at {n} threads")
            elif r["margin"] is None or r["margin"] < args.min_margin:
                problems.append(f"{key[0]}: {key[1]}: margin {_pct(r)} at {n} threads, below {args.min_margin:.0%}")
            if r is not None and r["threads"] != n:
                problems.append(f"{key[0]}: {key[1]}: asked for {n} threads, ran at {r['threads']}")
    if problems:
        print("\n" + "\n".join(f"- {p}" for p in problems))
    else:
        print(f"\nEvery margin is at least {args.min_margin:.0%} at {', '.join(map(str, counts))} threads "
              f"({len(keys)} verdicts in {len(files)} files).")
    return 1 if problems or not keys else 0


if __name__ == "__main__":
    sys.exit(main())
