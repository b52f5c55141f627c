"""Leaderboards, per-class tables, plots and an HTML report, derived from run records only.

One leaderboard row per backbone × dataset × protocol × decoder × init × train size, over the
seeds whose record is `ok`, metrics in percent (as papers report them):
- mean, sample standard deviation and a 95 % confidence interval of the mean (Student t with
  n − 1 degrees of freedom; NaN with a single seed, where no interval exists);
- `rank` by mean mIoU among the backbones of one comparison (same dataset, protocol, decoder,
  init and train size);
- `miou_diff` to the baseline backbone of that comparison and `ci_overlap`: whether the two 95 %
  intervals overlap, i.e. whether the difference should not be read as a win.
Failed and diverged cells are listed in `failures.csv`, never averaged in.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bench.core.atomic import write_text_atomic
from bench.core.errors import UserError
from bench.core.records import iter_records

CELL = ["backbone", "method", "arch", "dataset", "protocol", "decoder", "init", "train_size"]
COMPARISON = ["dataset", "protocol", "decoder", "init", "train_size"]
METRICS = ["miou", "pixel_acc", "mean_class_acc"]


def records_frame(results_dir) -> pd.DataFrame:
    """One row per run record; metrics in percent, `curve` as recorded (fractions)."""
    rows = []
    for path, record in iter_records(results_dir):
        metrics = record.get("metrics") or {}
        # The requested init is the matrix axis (`auto` by default); what it became per backbone
        # (encoder+decoder, encoder, none) stays in the record.
        row = {**record["cell"], "init": (record.get("config") or {}).get("init", "auto"),
               "status": record.get("status"), "error": record.get("error"), "record": str(path),
               "curve": record.get("curve") or [], "per_class_iou": metrics.get("per_class_iou") or {},
               "checkpoint": (record.get("checkpoint") or {}).get("path"), "config": record.get("config") or {}}
        for k in METRICS:
            row[k] = 100.0 * metrics[k] if metrics.get(k) is not None else float("nan")
        rows.append(row)
    extra = ["seed", "status", "error", "record", "curve", "per_class_iou", "checkpoint", "config"]
    return pd.DataFrame(rows, columns=CELL + extra + METRICS)


def t_interval(values) -> tuple[float, float, float, float]:
    """(mean, sample std, CI low, CI high) of the mean at 95 %, Student t over the values."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return (math.nan,) * 4
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(x) - 1)) * std / math.sqrt(len(x))
    return mean, std, mean - half, mean + half


def leaderboard(df: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    rows = []
    for key, group in df.groupby(CELL, sort=False, dropna=False):
        ok = group[group["status"] == "ok"]
        row = dict(zip(CELL, key), n_seeds=int(ok["seed"].nunique()), n_not_ok=int((group["status"] != "ok").sum()))
        for k in METRICS:
            row[f"{k}_mean"], row[f"{k}_std"], row[f"{k}_ci_low"], row[f"{k}_ci_high"] = t_interval(ok[k])
        rows.append(row)
    board = pd.DataFrame(rows)
    board["rank"] = (board.groupby(COMPARISON, dropna=False)["miou_mean"]
                     .rank(ascending=False, method="min").astype("Int64"))
    board["baseline"], board["miou_diff"], board["ci_overlap"] = baseline, math.nan, pd.NA
    if baseline is not None:
        for _, group in board.groupby(COMPARISON, dropna=False):
            base = group[group["backbone"] == baseline]
            if base.empty:
                continue
            b = base.iloc[0]
            for i, r in group.iterrows():
                board.at[i, "miou_diff"] = r["miou_mean"] - b["miou_mean"]
                if not any(math.isnan(v) for v in (r["miou_ci_low"], b["miou_ci_low"])):
                    board.at[i, "ci_overlap"] = bool(r["miou_ci_low"] <= b["miou_ci_high"]
                                                     and b["miou_ci_low"] <= r["miou_ci_high"])
    board = board.sort_values(COMPARISON + ["miou_mean"], ascending=[True] * len(COMPARISON) + [False],
                              na_position="last")
    cols = CELL + ["n_seeds", "n_not_ok", "rank", "baseline", "miou_diff", "ci_overlap"] + \
        [f"{k}_{s}" for k in METRICS for s in ("mean", "std", "ci_low", "ci_high")]
    return board[cols].reset_index(drop=True)


def per_class_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per-class IoU (percent, mean over ok seeds) for each leaderboard row, one column per class."""
    rows = []
    for key, group in df[df["status"] == "ok"].groupby(CELL, sort=False, dropna=False):
        ious = pd.DataFrame(list(group["per_class_iou"])).astype(float) * 100.0
        rows.append({**dict(zip(CELL, key)), "n_seeds": len(group), **ious.mean().to_dict()})
    return pd.DataFrame(rows)


def failures_table(df: pd.DataFrame) -> pd.DataFrame:
    bad = df[df["status"] != "ok"]
    return bad[CELL + ["seed", "status", "error", "record"]].reset_index(drop=True)


def manifest_backbones(results_dir: Path) -> list[str]:
    """Backbone names in manifest order (from `manifest.resolved.json`), if the folder has one."""
    try:
        resolved = json.loads((results_dir / "manifest.resolved.json").read_text())
        return [b["name"] for b in resolved.get("backbones", [])]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def write_reports(results_dir, baseline: str | None = None, plots: bool = True) -> dict:
    """Write leaderboard.csv/.md, per_class.csv, failures.csv, plots/ and report.html."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UserError(f"{results_dir}: results folder not found")
    df = records_frame(results_dir)
    if df.empty:
        raise UserError(f"{results_dir}: no run records under runs/*/record.json")
    # Manifest order first; backbones added by `bench submit` (records, not manifest) after it.
    order = manifest_backbones(results_dir)
    order += [b for b in dict.fromkeys(df["backbone"]) if b not in order]
    known = set(df["backbone"])
    if baseline is not None and baseline not in known:
        raise UserError(f"--baseline {baseline!r} is not a backbone of {results_dir}; "
                        f"backbones: {', '.join(sorted(known))}")
    baseline = baseline or next((b for b in order if b in known), None)

    board = leaderboard(df, baseline)
    per_class, failures = per_class_table(df), failures_table(df)
    paths = {name: results_dir / name for name in
             ("leaderboard.csv", "leaderboard.md", "per_class.csv", "failures.csv", "report.html")}
    write_text_atomic(paths["leaderboard.csv"], board.to_csv(index=False, float_format="%.4f"))
    write_text_atomic(paths["per_class.csv"], per_class.to_csv(index=False, float_format="%.4f"))
    write_text_atomic(paths["failures.csv"], failures.to_csv(index=False))
    shown = _display(board)
    markdown = shown.to_markdown(index=False)
    fail_md = failures.drop(columns=["record"]).to_markdown(index=False) if not failures.empty else "None."
    write_text_atomic(paths["leaderboard.md"], f"# Leaderboard: {results_dir.name}\n\n{_LEGEND.format(baseline=baseline)}"
                      f"\n\n{markdown}\n\n## Failed or diverged cells\n\n{fail_md}\n")
    figures = []
    if plots:
        from bench.plots import write_all

        from bench.layer_cka import pretrained_vs_finetuned

        figures = write_all(board, df, results_dir / "plots", order)
        figures += [p for p in pretrained_vs_finetuned(results_dir, df) if p.suffix in (".png", ".svg")]
    write_text_atomic(paths["report.html"], _html(results_dir.name, baseline, shown, failures,
                                                  [p for p in figures if p.suffix == ".png"]))
    return {"csv": paths["leaderboard.csv"], "md": paths["leaderboard.md"], "html": paths["report.html"],
            "markdown": markdown, "frame": board, "plots": figures}


def where(table: dict) -> str:
    """The lines that tell a user where the reports are."""
    plots = table["plots"][0].parent if table["plots"] else None
    return (f"leaderboard: {table['csv']}\n             {table['md']}\nreport:      {table['html']}"
            + (f"\nplots:       {plots}/ ({len(table['plots'])} files)" if plots else ""))


_LEGEND = ("Final-step metrics in percent over the seeds whose run is `ok`: mean ± sample std, and the 95 % "
           "confidence interval of the mean (Student t). `rank` orders the backbones of one comparison "
           "(dataset, protocol, decoder, init, train size); `Δ {baseline}` is the mIoU difference to the baseline "
           "backbone, marked `~` where the two intervals overlap.")


def _display(board: pd.DataFrame) -> pd.DataFrame:
    shown = board[["backbone", "dataset", "protocol", "decoder", "init", "train_size", "n_seeds", "n_not_ok",
                   "rank"]].copy()
    for k in METRICS:
        shown[k] = [_fmt(m, s) for m, s in zip(board[f"{k}_mean"], board[f"{k}_std"])]
    shown["miou 95% CI"] = ["—" if math.isnan(lo) else f"[{lo:.2f}, {hi:.2f}]"
                            for lo, hi in zip(board["miou_ci_low"], board["miou_ci_high"])]
    base = board["baseline"].iloc[0] if len(board) else None
    shown[f"Δ {base}"] = ["—" if math.isnan(d) else f"{d:+.2f}{' ~' if o is True else ''}"
                          for d, o in zip(board["miou_diff"], board["ci_overlap"])]
    return shown


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def _html(name: str, baseline, shown: pd.DataFrame, failures: pd.DataFrame, pngs: list[Path]) -> str:
    """One self-contained page: tables and every plot inlined (no network, no side files)."""
    images = "\n".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(p.stem)}</figcaption></figure>'
        for p in pngs)
    fail = failures.drop(columns=["record"]).to_html(index=False, na_rep="—") if not failures.empty else "<p>None.</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>depth2seg-bench: {html.escape(name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}} table{{border-collapse:collapse;font-size:90%}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} img{{max-width:100%}} figure{{margin:1em 0}}</style>
</head><body>
<h1>Leaderboard: {html.escape(name)}</h1>
<p>{html.escape(_LEGEND.format(baseline=baseline))}</p>
{shown.to_html(index=False, na_rep="—")}
<h2>Failed or diverged cells</h2>
{fail}
<h2>Plots</h2>
{images or "<p>No plots.</p>"}
</body></html>
"""
