"""Leaderboards, derived from run records only.

One row per backbone × dataset × protocol × decoder × train size: the number of seeds with an
`ok` record and the mean and sample standard deviation of their final metrics, in percent (as
papers report them). Failed and diverged cells are counted, never averaged in.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.atomic import write_text_atomic
from bench.errors import UserError
from bench.records import iter_records

GROUP = ["backbone", "method", "arch", "dataset", "protocol", "decoder", "train_size"]
METRICS = ["miou", "pixel_acc", "mean_class_acc"]


def records_frame(results_dir) -> pd.DataFrame:
    rows = []
    for _, record in iter_records(results_dir):
        row = {**record["cell"], "status": record.get("status")}
        for k in METRICS:
            row[k] = 100.0 * record["metrics"][k] if record.get("metrics") else float("nan")
        rows.append(row)
    return pd.DataFrame(rows, columns=GROUP + ["seed", "status"] + METRICS)


def leaderboard(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[df["status"] == "ok"]
    agg = ok.groupby(GROUP, sort=False).agg(
        n_seeds=("seed", "nunique"),
        **{f"{k}_{s}": (k, s) for k in METRICS for s in ("mean", "std")},
    )
    not_ok = (df[df["status"] != "ok"].groupby(GROUP, sort=False).size().rename("n_not_ok"))
    board = agg.join(not_ok, how="outer").reset_index()
    board["n_seeds"] = board["n_seeds"].fillna(0).astype(int)
    board["n_not_ok"] = board["n_not_ok"].fillna(0).astype(int)
    board = board.sort_values(["dataset", "protocol", "decoder", "train_size", "miou_mean"],
                              ascending=[True, True, True, True, False], na_position="last")
    cols = GROUP + ["n_seeds", "n_not_ok"] + [f"{k}_{s}" for k in METRICS for s in ("mean", "std")]
    return board[cols].reset_index(drop=True)


def write_leaderboard(results_dir) -> dict:
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UserError(f"{results_dir}: results folder not found")
    df = records_frame(results_dir)
    if df.empty:
        raise UserError(f"{results_dir}: no run records under runs/*/record.json")
    board = leaderboard(df)
    csv_path, md_path = results_dir / "leaderboard.csv", results_dir / "leaderboard.md"
    write_text_atomic(csv_path, board.to_csv(index=False, float_format="%.4f"))
    shown = board.drop(columns=["method", "arch"]).copy()
    for k in METRICS:
        shown[k] = [f"{m:.2f} ± {s:.2f}" if pd.notna(s) else (f"{m:.2f}" if pd.notna(m) else "—")
                    for m, s in zip(board[f"{k}_mean"], board[f"{k}_std"])]
    shown = shown.drop(columns=[f"{k}_{s}" for k in METRICS for s in ("mean", "std")])
    markdown = shown.to_markdown(index=False)
    write_text_atomic(md_path, f"# Leaderboard: {results_dir.name}\n\nFinal-step metrics in percent, mean ± sample std over seeds.\n\n{markdown}\n")
    return {"csv": csv_path, "md": md_path, "markdown": markdown, "frame": board}
