"""The baseline's advantage over every other backbone, across the variants of one dataset.

A world study (configs/mechanisms.yaml) transfers the same backbones in several variants of one
dataset -- `synth@base`, `synth@far`, ... -- each its own comparison, with its own baseline row
(`depth@far` in the far world; `bench.report.aggregate.baseline_row`). The leaderboard gives, per
comparison, each row minus its baseline with a paired 95 % interval. This module lays those
differences side by side, turned around to read as the baseline's advantage (baseline minus row):

- `contrast_<dataset>` (tables/, Markdown and LaTeX): per protocol x decoder (x init, train size),
  rows the other backbones by NAME, columns the dataset's variants; each cell the advantage in mIoU
  points and its paired interval, in bold where the interval excludes zero;
- `contrast_<dataset>` (plots/): the same numbers as points with their intervals, one panel per
  protocol x decoder, the variants along x, one colour per backbone NAME, and a line at zero.

Written only for a dataset run in two or more variants whose comparisons have a baseline row.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench.core.records import COMPARISON
from bench.core.variants import SEPARATOR, base_name
from bench.report.table_format import Cell, Table
from transfer.protocols import PROTOCOLS

SECTIONS = [k for k in COMPARISON if k != "dataset"]  # a comparison's keys but its dataset


def _variant(dataset: str) -> str:
    """The variant label of a dataset's display name (the name itself when it has none)."""
    return dataset.split(SEPARATOR, 1)[1] if SEPARATOR in dataset else dataset


def contrast_frame(board: pd.DataFrame, dataset_order=()) -> pd.DataFrame:
    """One row per (dataset, comparison, other backbone) of every dataset run in several variants,
    the datasets in `dataset_order` (display names; others after them, as the board has them):
    `against` (the other backbone's NAME, or its display name where its NAME repeats in the
    comparison), `baseline` (the row it is compared with), `advantage` = baseline minus it in mIoU
    points, `low`/`high` its paired 95 % interval, `significant`, `interval` (which interval), `n`."""
    columns = ["dataset_base", "variant", "dataset", *SECTIONS, "baseline", "against", "advantage", "low", "high",
               "significant", "interval", "n"]
    if board.empty or "diff_interval" not in board.columns:
        return pd.DataFrame(columns=columns)
    known = list(dataset_order)
    board = board.assign(dataset_base=[base_name(d) for d in board["dataset"]],
                         _rank=[known.index(d) if d in known else len(known) for d in board["dataset"]])
    board = board.sort_values("_rank", kind="stable")
    studied = board.groupby("dataset_base")["dataset"].nunique()
    rows = []
    for (dataset, *key), group in board[board["dataset_base"].isin(studied[studied > 1].index)].groupby(
            ["dataset", *SECTIONS], sort=False, dropna=False):
        base = group[group["diff_interval"] == "baseline"]
        if base.empty:
            continue
        names = [base_name(b) for b in group["backbone"]]
        for (_, row), name in zip(group.iterrows(), names):
            if row["diff_interval"] == "baseline":
                continue
            rows.append({"dataset_base": base_name(dataset), "variant": _variant(dataset), "dataset": dataset,
                         **dict(zip(SECTIONS, key)), "baseline": base["backbone"].iloc[0],
                         "against": name if names.count(name) == 1 else row["backbone"],
                         # the leaderboard's difference is row minus baseline: turned around here
                         "advantage": -row["miou_diff"], "low": -row["diff_ci_high"], "high": -row["diff_ci_low"],
                         "significant": None if pd.isna(row["significant"]) else bool(row["significant"]),
                         "interval": row["diff_interval"],
                         "n": int(row["n_seeds"])})
    return pd.DataFrame(rows, columns=columns)


def _order(values, first=()) -> list:
    seen = list(dict.fromkeys(values))
    return [v for v in first if v in seen] + [v for v in seen if v not in first]


def _sections(c: pd.DataFrame):
    keys = sorted(dict.fromkeys(zip(*(c[k] for k in SECTIONS))),
                  key=lambda k: (PROTOCOLS.index(k[0]) if k[0] in PROTOCOLS else len(PROTOCOLS), *map(str, k[1:])))
    for key in keys:
        yield key, c[(c[SECTIONS] == pd.Series(key, index=SECTIONS)).all(axis=1)]


def _cell(row) -> Cell:
    if not math.isfinite(row["advantage"]):
        return Cell("—")
    if not math.isfinite(row["low"]):
        return Cell(f"{row['advantage']:+.2f}")
    significant = row["significant"] is not None and not pd.isna(row["significant"]) and bool(row["significant"])
    return Cell(f"{row['advantage']:+.2f} [{row['low']:+.2f}, {row['high']:+.2f}]", bold=significant)


def contrast_tables(board: pd.DataFrame, order: list[str], dataset_order=()) -> dict[str, list]:
    """`contrast_<dataset>` -> one table per protocol x decoder (x init, train size); `order`: the
    backbones' display names, `dataset_order` the datasets', in manifest order (rows, columns)."""
    c = contrast_frame(board, dataset_order)
    backbone_order = list(dict.fromkeys(base_name(b) for b in order))
    out = {}
    for dataset, of_dataset in c.groupby("dataset_base", sort=False):
        name = f"contrast_{dataset}"
        out[name] = []
        for i, (key, part) in enumerate(_sections(of_dataset)):
            protocol, decoder, init, train_size = key
            variants = list(dict.fromkeys(part["variant"]))
            against = _order(part["against"], backbone_order)
            baselines = ", ".join(dict.fromkeys(part["baseline"]))
            grid = {(r["against"], r["variant"]): _cell(r) for _, r in part.iterrows()}
            n = sorted(set(part["n"]))
            caption = (f"The baseline's advantage in mIoU points on the variants of {dataset} (columns): the "
                       f"baseline row of each variant ({baselines}) minus each other backbone (rows), with the "
                       f"paired 95 % interval of the leaderboard ({', '.join(dict.fromkeys(part['interval']))}); "
                       f"bold where the interval excludes zero. {protocol} · {decoder} · init {init} · "
                       f"{train_size} training images; n = {', '.join(map(str, n))} seeds.")
            out[name].append(Table(
                name=f"{name}_{i}", title=f"Advantage of {base_name(part['baseline'].iloc[0])} on {dataset}: "
                                          f"{protocol} · {decoder} · init {init} · {train_size} training images",
                caption=caption, labels=["against"], columns=[(v,) for v in variants],
                rows=[([a], [grid.get((a, v), Cell("—")) for v in variants]) for a in against]))
    return out


def contrast_figures(board: pd.DataFrame, order: list[str], dataset_order=()):
    """(file stem, figure) per dataset run in several variants; the figures are open, for the tests."""
    from bench.report.plots import _figure, _slug, _with_all, backbone_colours

    c = contrast_frame(board, dataset_order)
    backbone_order = list(dict.fromkeys(base_name(b) for b in order))
    out = []
    for dataset, of_dataset in c.groupby("dataset_base", sort=False):
        panels = list(_sections(of_dataset))
        against = _order(of_dataset["against"], backbone_order)
        colours = _with_all(backbone_colours(backbone_order), against)  # a NAME's colour in every figure
        variants = list(dict.fromkeys(of_dataset["variant"]))
        fig, axes = _figure(1, len(panels), max(3.6, 0.9 * len(variants) + 1.5), 3.4, sharey=True)
        width = 0.7 / max(len(against), 1)
        for ax, ((protocol, decoder, init, train_size), part) in zip(axes.flat, panels):
            ax.axhline(0.0, color="0.3", lw=0.8)
            for j, a in enumerate(against):
                rows = part[part["against"] == a]
                x = np.array([variants.index(v) for v in rows["variant"]]) + (j - (len(against) - 1) / 2) * width
                y, lo, hi = rows["advantage"].to_numpy(float), rows["low"].to_numpy(float), rows["high"].to_numpy(float)
                ok = np.isfinite(lo) & np.isfinite(hi)
                ax.errorbar(x[ok], y[ok], yerr=[y[ok] - lo[ok], hi[ok] - y[ok]], fmt="o", color=colours[a],
                            ms=4, capsize=2, lw=1, label=a if ax is axes.flat[0] else None)
                ax.plot(x[~ok], y[~ok], "o", mfc="none", color=colours[a])
            ax.set_xticks(range(len(variants)), variants)
            ax.set(title=f"{protocol} · {decoder}" + (f" · init {init}" if of_dataset["init"].nunique() > 1 else "")
                   + (f" · n={train_size}" if of_dataset["train_size"].nunique() > 1 else ""),
                   xlabel=f"{dataset} variant", ylabel="advantage (mIoU points)")
        baseline = base_name(of_dataset["baseline"].iloc[0])
        fig.legend(title=f"{baseline} minus", loc="outside right upper", frameon=False)
        fig.suptitle(f"{dataset}: {baseline}'s advantage per variant (paired 95 % intervals; > 0: {baseline} better)")
        fig.set_label(f"{baseline} on the variants of {dataset}")
        out.append((f"contrast_{_slug(dataset)}", fig))
    return out


def plot_contrasts(board: pd.DataFrame, plots_dir, order: list[str], dataset_order=()) -> list:
    from bench.report.plots import _save, _style

    paths = []
    with _style():
        for stem, fig in contrast_figures(board, order, dataset_order):
            paths += _save(fig, plots_dir / stem)
    return paths
