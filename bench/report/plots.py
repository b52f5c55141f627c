"""Paper-style figures of a benchmark, drawn with seaborn/matplotlib, written as PNG (150 dpi) and SVG.

Inputs are the aggregator's DataFrames, metrics in percent: `board` (one row per backbone × dataset ×
protocol × decoder × init × train size, with `miou_mean` and its 95 % CI `miou_ci_low/high`, NaN when
fewer than 2 seeds) and `records` (one row per run, with the run's `curve`, whose `miou` is a fraction).

Choices, so that every figure reads the same way:
- Colours: one per backbone from seaborn's colour-blind palette, by position in the manifest order, so a
  backbone has the same colour in every figure. Past 10 backbones the colours cycle; the k-th cycle
  (k = position // 10) gets its own bar hatch (HATCHES[k]) and line marker (MARKERS[k]).
- Faceting: one file per dataset. Panels: protocols (few-shot, learning curves) or protocols on the x axis
  (bars); any of decoder / init / train size that takes several values in that dataset adds panels
  (bars, frozen-vs-full) or panel rows (few-shot, learning curves: decoder / init only).
- Error bars and bands are the board's 95 % CI; none where it is NaN. A cell without any successful seed
  is drawn as an "x" on the axis instead of a bar.
- Learning curves: the smallest train size of each dataset, successful runs only; line = mean over seeds
  at each step, band = min–max over seeds.
- Figures are plain `matplotlib.figure.Figure`s on an Agg canvas, never registered with pyplot: nothing is
  left open and the caller's backend is untouched.
"""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator

from bench.core import results_folder as rf
from bench.core.records import COMPARISON
from transfer.protocols import PROTOCOLS

DPI = 150
PROTOCOL_ORDER = list(PROTOCOLS)
FACETS = ["decoder", "init", "train_size"]
HATCHES = ["", "//", "..", "xx", "\\\\", "oo"]
MARKERS = ["o", "s", "^", "D", "v", "P"]
PALETTE_SIZE = 10
OFFSET = 0.14  # frozen-vs-full: vertical offset of the two points of a dumbbell, so their CIs do not overlap
REUSED_MARK = "†"  # over a bar whose pre-trained decoder was reused, in a comparison that mixes inits


# ---------------------------------------------------------------- helpers
def backbone_colours(backbone_order) -> dict[str, tuple[float, float, float]]:
    """A colour per backbone, by position in the manifest order (cycling past 10, see module doc)."""
    palette = sns.color_palette("colorblind", PALETTE_SIZE)
    return {b: tuple(float(c) for c in palette[i % PALETTE_SIZE]) for i, b in enumerate(dict.fromkeys(backbone_order))}


def _with_all(colours: dict, names) -> dict:
    """`colours`, extended (after the known ones, so theirs do not move) by any backbone it lacks."""
    missing = [b for b in dict.fromkeys(names) if b not in colours]
    return backbone_colours([*colours, *missing]) | dict(colours) if missing else colours


def _hatch(colours, b):
    return HATCHES[(list(colours).index(b) // PALETTE_SIZE) % len(HATCHES)]


def _marker(colours, b):
    return MARKERS[(list(colours).index(b) // PALETTE_SIZE) % len(MARKERS)]


def _protocols(values) -> list:
    present = set(values)
    return [p for p in PROTOCOL_ORDER if p in present] + sorted(present - set(PROTOCOL_ORDER), key=str)


def _varying(df, keys) -> list[str]:
    return [k for k in keys if k in df.columns and df[k].nunique(dropna=False) > 1]


def _groups(df, keys) -> list[tuple[str, pd.DataFrame]]:
    """(panel title, rows) for each combination of `keys`; one untitled group when `keys` is empty."""
    if not keys:
        return [("", df)]
    out = []
    for values, sub in df.groupby(keys, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        out.append((" · ".join(f"{v} training images" if k == "train_size" else f"{k}={v}"
                               for k, v in zip(keys, values)), sub))
    return out


def _mixed_and_reused(row) -> bool:
    return bool(row.get("mixed_init", False)) and row.get("init_effective") == "encoder+decoder"


def _slug(name) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_") or "unnamed"


def _finite(*xs) -> bool:
    return all(x is not None and isinstance(x, (int, float, np.number)) and math.isfinite(x) for x in xs)


def _ci(row) -> tuple[float, float]:
    """The row's 95 % CI (drawn as the interval itself, so a CI not centred on the mean is fine)."""
    return row.get("miou_ci_low", float("nan")), row.get("miou_ci_high", float("nan"))


def _figure(nrows, ncols, panel_w, panel_h, **kw):
    # At least 8 inches wide: with a single panel the suptitle would otherwise run into the legend.
    fig = Figure(figsize=(max(panel_w * ncols + 1.8, 8.0), panel_h * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def _style():
    return rc_context({**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.85),
                       "svg.hashsalt": "depth2seg-bench"})


SUBJECT_KEY = "Subject"  # PNG text chunk: what the figure compares, in words, for the report's caption


def _save(fig, path_stem, subject: str | None = None) -> list[Path]:
    path_stem = Path(path_stem)
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    png, svg = Path(f"{path_stem}.png"), Path(f"{path_stem}.svg")
    # The subject (what the figure compares) travels in the PNG, for report.html's caption; builders set
    # it as the figure's label.
    subject = subject or fig.get_label()
    fig.savefig(png, dpi=DPI, bbox_inches="tight", metadata={SUBJECT_KEY: subject} if subject else None)
    fig.savefig(svg, bbox_inches="tight", metadata={"Date": None})
    fig.clear()
    return [png, svg]


def _backbone_legend(fig, colours, backbones, *, lines=False, extra=()):
    handles = [Line2D([], [], color=colours[b], marker=_marker(colours, b), label=b) if lines
               else Patch(facecolor=colours[b], hatch=_hatch(colours, b), edgecolor="0.25", label=b)
               for b in backbones]
    fig.legend(handles=[*handles, *extra], title="backbone", loc="outside right upper", frameon=False)


# ---------------------------------------------------------------- bars (Table 1 at a glance)
def _bars_figures(board, colours):
    """(name, figure, {board index: bar}) per dataset; the figures are still open, for the tests."""
    colours = _with_all(colours, board["backbone"])
    out = []
    for dataset, d in board.groupby("dataset", sort=True):
        panels = _groups(d, _varying(d, FACETS))
        backbones = [b for b in colours if b in set(d["backbone"])]
        protocols = _protocols(d["protocol"])
        nb, width = len(backbones), 0.8 / max(len(backbones), 1)
        panel_w = max(3.2, 0.28 * nb * len(protocols) + 1.2)
        ncols = max(1, min(len(panels), 3, int(16 // panel_w)))  # at most ~16 inches wide
        fig, axes = _figure(math.ceil(len(panels) / ncols), ncols, panel_w, 3.2, sharey=True)
        bars, failed, top, drew_ci, marked = {}, False, 0.0, False, False
        for ax, (title, sub) in zip(axes.flat, panels):
            protocols = _protocols(sub["protocol"])  # a panel shows only its own protocols (linear: one)
            for idx, row in sub.iterrows():
                b = row["backbone"]
                x = protocols.index(row["protocol"]) + (backbones.index(b) - (nb - 1) / 2) * width
                m, (lo, hi) = row["miou_mean"], _ci(row)
                if not _finite(m):
                    ax.plot([x], [0], marker="x", ls="none", color=colours[b], clip_on=False, zorder=3)
                    failed = True
                    continue
                bars[idx] = ax.bar(x, m, width, color=colours[b], hatch=_hatch(colours, b),
                                   edgecolor="0.25", linewidth=0.5)[0]
                top = max(top, m)
                if _finite(lo, hi):
                    ax.errorbar(x, (lo + hi) / 2, yerr=abs(hi - lo) / 2, fmt="none", ecolor="0.15", capsize=2, lw=1)
                    top, drew_ci = max(top, hi), True
                if _mixed_and_reused(row):  # this comparison mixes inits: mark the reused decoders
                    ax.annotate(REUSED_MARK, (x, max(m, hi) if _finite(hi) else m), xytext=(0, 2),
                                textcoords="offset points", ha="center", va="bottom", fontsize=9)
                    marked = True
            ax.set_xticks(range(len(protocols)), protocols)
            ax.set_xlim(-0.5, len(protocols) - 0.5)
            ax.set(title=title, xlabel="protocol", ylabel="mIoU (%)")
        # The panels share one y axis: set its range once every bar is drawn, or the first
        # panel's autoscaled top would clip the taller bars of the others.
        for ax in axes.flat:
            ax.set_ylim(0, max(top * 1.05, 1.0))
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        extra = [Line2D([], [], marker="x", ls="none", color="0.3", label="no successful seed")] if failed else []
        if marked:
            extra.append(Line2D([], [], marker=f"${REUSED_MARK}$", ls="none", color="0.2",
                                label="pre-trained decoder reused\n(the panel mixes inits)"))
        _backbone_legend(fig, colours, backbones, extra=extra)
        bars_say = "error bars: 95 % CI over seeds" if drew_ci else "one seed per bar: no error bars"
        fig.suptitle(f"{dataset}: mIoU by protocol (mean over seeds, {bars_say})")
        fig.set_label(str(dataset))
        out.append((f"bars_{_slug(dataset)}", fig, bars))
    return out


def plot_bars(board, plots_dir, colours) -> list[Path]:
    with _style():
        return [p for name, fig, _ in _bars_figures(board, colours) for p in _save(fig, Path(plots_dir) / name)]


# ---------------------------------------------------------------- few-shot and learning curves
def _line_panels(d) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) of every protocol × decoder/init combination (those that vary) that has rows:
    a combination that cannot exist (linear × deeplabv3) gets no empty panel."""
    panels = []
    for row_title, rsub in _groups(d, _varying(d, ["decoder", "init"])):
        for protocol in _protocols(rsub["protocol"]):
            sub = rsub[rsub["protocol"] == protocol]
            if not sub.empty:
                panels.append((" · ".join(t for t in (protocol, row_title) if t), sub))
    return panels


def _share_scales(axes, x=True, y=True):
    """Share x and/or y limits among the visible panels, keeping every panel's own tick labels (matplotlib's
    `subplots(sharex=...)` would hide those above a hidden panel): compared panels must read on one scale."""
    first, *rest = axes
    for ax in rest:
        if x:
            ax.sharex(first)
        if y:
            ax.sharey(first)


def _line_grid_figure(d, colours, draw, xlabel, suptitle):
    """(figure, {panel title: axes}): one panel per protocol × decoder/init combination with data, at most
    three per row, all on shared x and y scales; `draw(ax, rows, b)` per backbone."""
    panels = _line_panels(d)
    backbones = [b for b in colours if b in set(d["backbone"])]
    ncols = min(len(panels), 3)
    fig, axes = _figure(math.ceil(len(panels) / ncols), ncols, 3.4, 2.9)
    used = list(axes.flat)[:len(panels)]
    _share_scales(used)
    for ax, (title, sub) in zip(used, panels):
        for b in backbones:
            if (sub["backbone"] == b).any():
                draw(ax, sub[sub["backbone"] == b], b)
        ax.set(title=title, xlabel=xlabel, ylabel="mIoU (%)")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    _backbone_legend(fig, colours, backbones, lines=True)
    fig.suptitle(suptitle)
    return fig, dict(zip((t for t, _ in panels), used))


def _line_grid(d, colours, draw, xlabel, suptitle, path_stem, subject=None) -> list[Path]:
    fig, _ = _line_grid_figure(d, colours, draw, xlabel, suptitle)
    return _save(fig, path_stem, subject)


def plot_few_shot(board, plots_dir, colours) -> list[Path]:
    """mIoU vs training-set size, one panel per protocol; datasets with a single train size are skipped."""
    colours, paths = _with_all(colours, board["backbone"]), []

    def draw(ax, s, b):
        s = s.sort_values("train_size")
        x, nan = s["train_size"].to_numpy(float), pd.Series(np.nan, index=s.index)
        ax.plot(x, s["miou_mean"].to_numpy(float), color=colours[b], marker=_marker(colours, b))
        ax.fill_between(x, s.get("miou_ci_low", nan).to_numpy(float), s.get("miou_ci_high", nan).to_numpy(float),
                        color=colours[b], alpha=0.18, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(int(n)) for n in sizes])
        ax.xaxis.set_minor_locator(NullLocator())

    with _style():
        for dataset, d in board.groupby("dataset", sort=True):
            sizes = sorted(d["train_size"].dropna().unique())
            if len(sizes) >= 2:
                band = "band: 95 % CI over seeds" if d["miou_ci_low"].notna().any() else "one seed: no band"
                paths += _line_grid(d, colours, draw, "training images",
                                    f"{dataset}: mIoU vs training-set size (mean over seeds, {band})",
                                    Path(plots_dir) / f"few_shot_{_slug(dataset)}", subject=str(dataset))
    return paths


def _curve_points(records) -> pd.DataFrame:
    """One row per (run, curve point with an mIoU), miou in percent; successful runs only."""
    rows = []
    ok = records if "status" not in records.columns else records[records["status"] == rf.OK]
    for rec in ok.to_dict("records"):
        curve = rec.get("curve")
        if not isinstance(curve, (list, tuple)):
            continue
        for pt in curve:
            if isinstance(pt, dict) and _finite(pt.get("step"), pt.get("miou")):
                # Records before the validation split measured their curve on the evaluation set.
                rows.append({**{k: v for k, v in rec.items() if k != "curve"}, "step": pt["step"],
                             "curve_miou": 100.0 * pt["miou"], "split": pt.get("split", "evaluation set")})
    return pd.DataFrame(rows)


def _learning_curve_figures(records, colours):
    """(name, figure, {panel title: axes}) per dataset; the figures are still open, for the tests."""
    if records is None or records.empty or "curve" not in records.columns:
        return []
    pts = _curve_points(records)
    if pts.empty:
        return []
    colours, out = _with_all(colours, pts["backbone"]), []

    def draw(ax, s, b):
        g = s.groupby("step")["curve_miou"].agg(["mean", "min", "max"]).sort_index()
        ax.plot(g.index, g["mean"], color=colours[b], marker=_marker(colours, b),
                markevery=max(1, len(g) // 10), markersize=4)
        ax.fill_between(g.index, g["min"], g["max"], color=colours[b], alpha=0.18, linewidth=0)

    for dataset, d in pts.groupby("dataset", sort=True):
        n0 = d["train_size"].min()
        d = d[d["train_size"] == n0]
        several = (d.groupby(["backbone", "protocol", "decoder", "init", "step"])["seed"].nunique() > 1).any()
        band = "band: min–max over seeds" if several else "one seed: no band"
        splits = set(d["split"]) if "split" in d.columns else {"evaluation set"}
        measured = " and ".join(sorted(splits)) + (" (mixed!)" if len(splits) > 1 else "")
        fig, panels = _line_grid_figure(d, colours, draw, "step",
                                        f"{dataset}: {measured} mIoU during training, {int(n0)} training images "
                                        f"(mean over seeds, {band})")
        fig.set_label(f"{dataset}, {int(n0)} training images")
        out.append((f"learning_curves_{_slug(dataset)}", fig, panels))
    return out


def plot_learning_curves(records, plots_dir, colours) -> list[Path]:
    """mIoU (%) vs step on the split each curve was measured on (validation; older records: the
    evaluation set), per backbone, one panel per protocol × decoder/init with data, smallest train
    size per dataset."""
    with _style():
        return [p for name, fig, _ in _learning_curve_figures(records, colours)
                for p in _save(fig, Path(plots_dir) / name)]


# ---------------------------------------------------------------- frozen vs full fine-tuning
def _frozen_vs_full_figures(board, colours):
    """(name, figure, [panel axes]) per dataset with both protocols; the figures are still open, for the tests.
    The panels share one mIoU axis: with their own ranges a 0.3-point gap would look like a 24-point one."""
    colours, out = _with_all(colours, board["backbone"]), []
    both = board[board["protocol"].isin(["frozen", "full"])]
    for dataset, d in both.groupby("dataset", sort=True):
        panels = [(t, s) for t, s in _groups(d, _varying(d, FACETS)) if {"frozen", "full"} <= set(s["protocol"])]
        if not panels:
            continue
        backbones = [b for b in colours if b in set(d["backbone"])]
        ncols = min(len(panels), 3)
        fig, axes = _figure(math.ceil(len(panels) / ncols), ncols, 3.6, 0.45 * len(backbones) + 1.2, sharey=True)
        used = list(axes.flat)[:len(panels)]
        _share_scales(used, y=False)
        for ax, (title, sub) in zip(used, panels):
            for y, b in enumerate(backbones):
                pts = {}  # protocol -> (mIoU, y): full just above the backbone's line, frozen just below
                for _, row in sub[sub["backbone"] == b].iterrows():
                    m, (lo, hi), full = row["miou_mean"], _ci(row), row["protocol"] == "full"
                    if not _finite(m):
                        continue
                    yy = y - OFFSET if full else y + OFFSET
                    pts[row["protocol"]] = (m, yy)
                    if _finite(lo, hi):
                        ax.errorbar((lo + hi) / 2, yy, xerr=abs(hi - lo) / 2, fmt="none", ecolor=colours[b], capsize=2, lw=1)
                    ax.plot([m], [yy], marker="o", ms=7, mfc=colours[b] if full else "white", mec=colours[b],
                            mew=1.5, ls="none", zorder=3)
                if len(pts) == 2:
                    (x0, y0), (x1, y1) = pts["frozen"], pts["full"]
                    ax.plot([x0, x1], [y0, y1], color=colours[b], lw=2, alpha=0.5, zorder=2)
                    ax.annotate(f"{x1 - x0:+.1f}", (1.0, y), xycoords=("axes fraction", "data"), xytext=(4, 0),
                                textcoords="offset points", va="center", fontsize=8, color=colours[b])
            ax.set_yticks(range(len(backbones)), backbones)
            ax.set_ylim(len(backbones) - 0.5, -0.5)
            ax.margins(x=0.15)
            ax.set(title=title, xlabel="mIoU (%)", ylabel="backbone")
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        handles = [Line2D([], [], marker="o", ls="none", mfc="0.3", mec="0.3", label="full fine-tuning"),
                   Line2D([], [], marker="o", ls="none", mfc="white", mec="0.3", label="frozen encoder")]
        fig.legend(handles=handles, title="protocol", loc="outside right upper", frameon=False)
        fig.suptitle(f"{dataset}: frozen encoder vs full fine-tuning\n(right: full − frozen, points; "
                     f"one mIoU scale for all panels)")
        fig.set_label(str(dataset))
        out.append((f"frozen_vs_full_{_slug(dataset)}", fig, used))
    return out


def plot_frozen_vs_full(board, plots_dir, colours) -> list[Path]:
    """Per backbone, frozen-encoder vs full fine-tuning mIoU as a dumbbell (cf. Lao et al., Fig. 4)."""
    with _style():
        return [p for name, fig, _ in _frozen_vs_full_figures(board, colours)
                for p in _save(fig, Path(plots_dir) / name)]


# ---------------------------------------------------------------- CKA
def plot_cka_heatmap(matrix, row_labels, col_labels, title, path_stem, xlabel, ylabel,
                     subject: str | None = None) -> list[Path]:
    """A CKA heatmap, colour bar fixed to [0, 1]; with many layers only every k-th label is written."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"CKA matrix of shape {matrix.shape} for {len(row_labels)}×{len(col_labels)} labels")
    nr, nc = matrix.shape
    frame = pd.DataFrame(matrix, index=[str(x) for x in row_labels], columns=[str(x) for x in col_labels])
    with _style():
        fig = Figure(figsize=(min(max(0.25 * nc + 3, 4.5), 13), min(max(0.25 * nr + 1.5, 3.5), 12)), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        sns.heatmap(frame, ax=ax, vmin=0, vmax=1, cmap="viridis", square=True, annot=nr * nc <= 144, fmt=".2f",
                    annot_kws={"fontsize": 7}, rasterized=nr * nc > 400,  # keeps big SVGs small
                    xticklabels=max(1, math.ceil(nc / 30)), yticklabels=max(1, math.ceil(nr / 30)),
                    cbar_kws={"label": "CKA", "shrink": 0.8})
        ax.tick_params(labelsize=7 if max(nr, nc) > 20 else 9)
        ax.set_xticklabels(ax.get_xticklabels(), rotation=90 if max(map(len, frame.columns), default=0) > 3 else 0)
        ax.set_yticklabels(ax.get_yticklabels(), rotation=0)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        return _save(fig, path_stem, subject)


CKA_KINDS = {  # cka_across_ panels: kind -> (title, y label)
    "pretrained_vs_finetuned": ("pre-trained vs fine-tuned, same layer", "CKA(pre-trained, fine-tuned)"),
    "within_pretrained": ("within the pre-trained network", "CKA(layer 0, layer)"),
    "within_finetuned": ("within the fine-tuned network", "CKA(layer 0, layer)"),
}


def _cka_across_figures(cka: pd.DataFrame, colours):
    """(name, figure, {kind: axes}) per comparison of `cka`, a long frame with one row per (comparison,
    backbone, seed, kind, layer_index) and columns COMPARISON + backbone, seed, kind, layer_index, layer,
    cka (see bench.report.layer_cka.cka_across_frame). Lines: mean over seeds per layer; band: min–max."""
    if cka is None or cka.empty:
        return []
    colours, out = _with_all(colours, cka["backbone"]), []
    for key, d in cka.groupby(COMPARISON, sort=True, dropna=False):
        dataset, protocol, decoder, init, n = key
        kinds = [k for k in CKA_KINDS if (d["kind"] == k).any()]
        backbones = [b for b in colours if b in set(d["backbone"])]
        fig, axes = _figure(1, len(kinds), 3.8, 3.2)
        used = list(axes.flat)
        _share_scales(used)
        several = False
        for ax, kind in zip(used, kinds):
            k = d[d["kind"] == kind]
            for b in backbones:
                g = k[k["backbone"] == b].groupby("layer_index")["cka"].agg(["mean", "min", "max", "count"])
                if g.empty:
                    continue
                ax.plot(g.index, g["mean"], color=colours[b], marker=_marker(colours, b), markersize=4, label=b)
                if (g["count"] > 1).any():
                    ax.fill_between(g.index, g["min"], g["max"], color=colours[b], alpha=0.18, linewidth=0)
                    several = True
            title, ylabel = CKA_KINDS[kind]
            ax.set(title=title, ylabel=ylabel)
        # One layer axis: the layer names where every backbone probed the same layers, else their indices.
        names = d.groupby("backbone")["layer"].apply(lambda s: tuple(s.drop_duplicates()))
        index = sorted(d["layer_index"].unique())
        if names.nunique() == 1:
            labels = [str(x) for x in names.iloc[0]]
            xlabel = "layer"
        else:
            labels, xlabel = [str(int(i)) for i in index], "layer (index from the input; architectures differ)"
        low = float(np.nanmin(d["cka"])) if d["cka"].notna().any() else 0.0
        for ax in used:
            ax.set_xticks(index, labels[:len(index)], rotation=45 if max(map(len, labels)) > 4 else 0)
            ax.set_xlabel(xlabel)
            ax.set_ylim(max(0.0, math.floor((low - 0.05) * 10) / 10), 1.02)
        _backbone_legend(fig, colours, backbones, lines=True)
        band = "band: min–max over seeds" if several else "one seed: no band"
        subject = (f"{dataset}, {protocol} fine-tuning, {decoder} decoder, init {init}, "
                   f"{int(n) if _finite(n) else n} training images")
        fig.suptitle(f"CKA across backbones (mean over seeds, {band})\n" + textwrap.fill(subject, 60))
        fig.set_label(subject)
        name = "cka_across_" + "_".join(_slug(v) for v in (dataset, protocol, decoder, f"init-{init}",
                                                               f"n{int(n) if _finite(n) else n}"))
        out.append((name, fig, dict(zip(kinds, used))))
    return out


def plot_cka_across(cka: pd.DataFrame, plots_dir, colours) -> list[Path]:
    """MeSa's layer-wise analyses, every backbone of a comparison in one figure (see _cka_across_figures)."""
    with _style():
        return [p for name, fig, _ in _cka_across_figures(cka, colours) for p in _save(fig, Path(plots_dir) / name)]


# ---------------------------------------------------------------- pre-training losses
def _pretrain_loss_figure(histories: dict, colours, name: str):
    """(figure, {pre-training: axes}) for `histories` {display name: (method, history frame with step, loss)}:
    one panel per pre-training, each with its own loss scale (the methods' losses are not comparable),
    steps on a shared x axis; thin: the loss of each step, thick: a running mean."""
    colours = _with_all(colours, histories)
    ncols = min(len(histories), 3)
    fig, axes = _figure(math.ceil(len(histories) / ncols), ncols, 3.6, 2.8)
    used = list(axes.flat)[:len(histories)]
    _share_scales(used, y=False)
    for ax, (backbone, (method, h)) in zip(used, histories.items()):
        h = h.sort_values("step")
        window = max(1, len(h) // 20)
        ax.plot(h["step"], h["loss"], color=colours[backbone], lw=0.7, alpha=0.45)
        ax.plot(h["step"], h["loss"].rolling(window, min_periods=1).mean(), color=colours[backbone], lw=2)
        ax.set(title=f"{backbone} ({method})" if method and method != backbone else str(backbone),
               xlabel="step", ylabel="loss")
    for ax in list(axes.flat)[len(histories):]:
        ax.set_visible(False)
    fig.suptitle(f"{name}: pre-training loss per step (thin) and running mean (thick)")
    fig.set_label(", ".join(f"{b} ({m})" if m and m != b else str(b) for b, (m, _) in histories.items()))
    return fig, dict(zip(histories, used))


def plot_pretrain_losses(histories: dict, plots_dir, colours, name: str) -> list[Path]:
    """`plots/pretrain_loss_<name>.png/.svg` from the pre-trainings' history.csv (nothing without any)."""
    if not histories:
        return []
    with _style():
        fig, _ = _pretrain_loss_figure(histories, colours, name)
        return _save(fig, Path(plots_dir) / f"pretrain_loss_{_slug(name)}")


# ---------------------------------------------------------------- all
def write_all(board, records, plots_dir, backbone_order) -> list[Path]:
    """Every applicable figure of a benchmark (CKA heatmaps are drawn by whoever computes CKA)."""
    seen = [*backbone_order]
    for df in (board, records):
        if df is not None and "backbone" in df.columns:
            seen += list(df["backbone"].dropna())
    colours = backbone_colours(seen)
    paths = []
    if board is not None and not board.empty:
        paths += plot_bars(board, plots_dir, colours)
        paths += plot_few_shot(board, plots_dir, colours)
        paths += plot_frozen_vs_full(board, plots_dir, colours)
    if records is not None and not records.empty:
        paths += plot_learning_curves(records, plots_dir, colours)
    return paths
