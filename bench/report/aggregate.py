"""Leaderboards, per-class tables, plots and an HTML report, derived from run records only.

One leaderboard row per backbone x dataset x protocol x decoder x init x train size, over the
seeds whose record is `ok`, metrics in percent (as papers report them):
- mean, sample standard deviation and a 95 % confidence interval of the mean (Student t with
  n - 1 degrees of freedom, clipped to [0, 100]; none with a single seed);
- `init_effective`: what the requested init became for this backbone (`none`: random encoder,
  `encoder`: pre-trained encoder and a fresh decoder, `encoder+decoder`: its pre-trained decoder
  reused too). A comparison whose rows differ in decoder reuse says so (`mixed_init`,
  `comparison_inits`, and the leaderboard's section header): it compares practice with
  practice (Lao et al. Table 1), not encoders alone (Table 3, `init: encoder`);
- `rank` by mean mIoU among the backbones of one comparison (same dataset, protocol, decoder,
  requested init and train size);
- `miou_diff` to the baseline backbone of that comparison with its paired 95 % interval (where a
  comparison lacks the baseline, the one backbone of the baseline's NAME in it: in a world study,
  `depth@far` in the far world; `baseline` names the row used) (`bench.report.statistics`: paired t over seeds, or a paired bootstrap over evaluation images with
  one seed), `diff_interval` naming which, and `significant` when the interval excludes zero.
Failed and diverged cells are listed in `failures.csv`, never averaged in.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from bench.core import results_folder as rf
from bench.core.atomic import write_text_atomic
from bench.core.claims import exclusive_lock
from bench.core.errors import UserError
from bench.core.records import COMPARISON, iter_records
from bench.core.sizes import size_text
from bench.core.version import VERSIONED_LIBRARIES
from bench.core.synth.world import WORLD_CONTROLS, SynthWorld
from bench.core.variants import base_name, cell_display, display_name
from bench.report.html import render_report
from bench.report.statistics import paired_difference, t_interval

CELL = ["backbone", "method", "arch", "dataset", "protocol", "decoder", "init", "init_effective", "train_size"]
METRICS = ["miou", "pixel_acc", "mean_class_acc"]
PERCENT = (0.0, 100.0)


def records_frame(results_dir) -> pd.DataFrame:
    """One row per run record; metrics in percent, `curve` as recorded (fractions).

    `backbone` and `dataset` are display names (`NAME@LABEL` for a variant, bench/core/variants.py),
    so that variants are rows and comparisons of their own; `backbone_variant`/`dataset_variant`
    hold the labels alone (None: no label). `pretrain_size` is the HxW the checkpoint was
    pre-trained at (None: random init, or a checkpoint that does not say), `transfer_size` the
    cell's training size: its crop, else its resize (`native`: the images as they are). `world`
    and `world_<control>` describe the generated world a cell ran in (`world_columns`)."""
    rows = []
    for path, record in iter_records(results_dir):
        metrics = record.get("metrics") or {}
        cell = record["cell"]
        # `init` is the requested init, a matrix axis (`auto` by default); `init_effective` what it
        # became for this backbone (none, encoder, encoder+decoder).
        row = {**cell, "backbone": cell_display(cell, "backbone"), "dataset": cell_display(cell, "dataset"),
               "backbone_variant": cell.get("backbone_variant"), "dataset_variant": cell.get("dataset_variant"),
               "pretrain_size": _pretrain_size(record),
               "transfer_size": _transfer_size(record),
               "init": (record.get("config") or {}).get("init", "auto"),
               "init_effective": (record.get("init") or {}).get("effective", "unknown"),
               "status": record.get("status"), "error": record.get("error"), "record": str(path),
               "curve": record.get("curve") or [], "per_class_iou": metrics.get("per_class_iou") or {},
               "per_image": record.get("per_image"), "selected": _selected(record),
               "checkpoint": (record.get("checkpoint") or {}).get("path"), "config": record.get("config") or {},
               "versions": versions_text(record), **world_columns(record)}
        for k in METRICS:
            row[k] = 100.0 * metrics[k] if metrics.get(k) is not None else float("nan")
        rows.append(row)
    extra = ["seed", "status", "error", "record", "curve", "per_class_iou", "per_image", "selected", "checkpoint",
             "config", "versions", *VARIANT_COLUMNS, *WORLD_COLUMNS]
    df = pd.DataFrame(rows, columns=CELL + extra + METRICS)
    for column in [*VARIANT_COLUMNS, "world"]:  # None, not NaN, where unset: these are labels, not numbers
        df[column] = df[column].astype(object).where(df[column].notna(), None)
    # A failed or skipped cell records no init: it belongs to the row of its seeds that ran.
    same_row = [c for c in CELL if c != "init_effective"]
    known = df[df["init_effective"] != "unknown"].groupby(same_row, dropna=False)["init_effective"].first()
    for i in df.index[df["init_effective"] == "unknown"]:
        key = tuple(df.loc[i, same_row])
        if key in known.index:
            df.at[i, "init_effective"] = known[key]
    return df


VARIANT_COLUMNS = ["backbone_variant", "dataset_variant", "pretrain_size", "transfer_size"]


WORLD_COLUMNS = ["world", *(f"world_{k}" for k in WORLD_CONTROLS)]


def world_columns(record: dict) -> dict:
    """The generated world a cell ran in, as columns: `world` its controls in words (`default`:
    none set), and `world_<control>` each control's value, the default where unset. None for a
    cell on real data, or one whose record predates `config.world`."""
    world = (record.get("config") or {}).get("world")
    if not isinstance(world, dict):
        return dict.fromkeys(WORLD_COLUMNS)
    defaults = SynthWorld.defaults()
    set_ = {k: world[k] for k in WORLD_CONTROLS if k in world}
    return {"world": ", ".join(f"{k}={v}" for k, v in set_.items()) or "default",
            **{f"world_{k}": set_.get(k, defaults[k]) for k in WORLD_CONTROLS}}


def versions_text(record: dict) -> str:
    """The versions of the libraries that decide a record's numbers, in words (`torch 2.14.1,
    torchvision 0.29.1, timm 1.0.31`; `?` where the record does not say)."""
    versions = record.get("versions") or {}
    return ", ".join(f"{name} {versions.get(name) or '?'}" for name in VERSIONED_LIBRARIES)


def mixed_versions(df: pd.DataFrame) -> dict[tuple, str]:
    """The comparisons whose ok records come from more than one set of library versions, each with
    those sets in words and how many records carry each: their differences mix a library change
    with the backbones'."""
    out = {}
    for key, group in df[df["status"] == rf.OK].groupby(COMPARISON, sort=False, dropna=False):
        counts = group["versions"].value_counts()
        if len(counts) > 1:
            out[key] = "; ".join(f"{text} ({n} record{'s' if n != 1 else ''})" for text, n in sorted(counts.items()))
    return out


def _pretrain_size(record: dict) -> str | None:
    """The size the cell's checkpoint was pre-trained at, as its record says; a record written
    before records said asks the checkpoint itself, if it is still there (its header only)."""
    checkpoint = record.get("checkpoint")
    if not isinstance(checkpoint, dict):
        return None
    if "pretrain_size" in checkpoint:
        return checkpoint["pretrain_size"]
    path = Path(checkpoint.get("path") or "")
    if not path.is_file():
        return None
    from bench.core.checkpoint import read_checkpoint_meta
    from bench.core.sizes import pretrain_image_size

    try:
        return pretrain_image_size(read_checkpoint_meta(path))
    except UserError:
        return None


def _transfer_size(record: dict) -> str | None:
    """The size a cell trained at, from its resolved data settings: the crop, else the resize
    (None: a record without settings, such as a cell skipped before it resolved)."""
    settings = (record.get("config") or {}).get("dataset")
    if not isinstance(settings, dict):
        return None
    return size_text(settings.get("crop") or settings.get("resize"))


def _selected(record: dict) -> str:
    """The candidate a sweep selected on validation, in words (`lr=0.01 of 4`); "" without a sweep."""
    sweep = record.get("sweep") or {}
    k = sweep.get("selected")
    if k is None:
        return ""
    optim = sweep["candidates"][k]["optim"]
    return f"{', '.join(f'{name}={value:g}' for name, value in optim.items())} of {len(sweep['candidates'])}"


def _reuses_decoder(effective: str) -> bool:
    return effective == "encoder+decoder"


def comparison_inits(group: pd.DataFrame) -> tuple[bool, str]:
    """(whether the rows of one comparison differ in decoder reuse, the effective inits in words)."""
    by_init: dict[str, list[str]] = {}
    for backbone, effective in zip(group["backbone"], group["init_effective"]):
        by_init.setdefault(effective, []).append(backbone)
    mixed = len({_reuses_decoder(e) for e in by_init}) > 1
    words = "; ".join(f"{e}: {', '.join(dict.fromkeys(b))}" for e, b in sorted(by_init.items()))
    return mixed, words


def leaderboard(df: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    rows, seeds = [], {}
    for key, group in df.groupby(CELL, sort=False, dropna=False):
        ok = group[group["status"] == rf.OK]
        row = dict(zip(CELL, key), n_seeds=int(ok["seed"].nunique()), n_not_ok=int((group["status"] != rf.OK).sum()),
                   selected="; ".join(dict.fromkeys(v for v in ok["selected"] if v)))
        for k in METRICS:
            row[f"{k}_mean"], row[f"{k}_std"], row[f"{k}_ci_low"], row[f"{k}_ci_high"] = t_interval(ok[k], PERCENT)
        rows.append(row)
        seeds[len(rows) - 1] = {int(s): (m, p) for s, m, p in zip(ok["seed"], ok["miou"], ok["per_image"])}
    board = pd.DataFrame(rows)
    board["rank"] = (board.groupby(COMPARISON, dropna=False)["miou_mean"]
                     .rank(ascending=False, method="min").astype("Int64"))
    board["mixed_init"], board["comparison_inits"] = False, ""
    board["baseline"], board["miou_diff"], board["diff_ci_low"], board["diff_ci_high"] = baseline, *([math.nan] * 3)
    board["diff_interval"], board["significant"] = "", pd.NA
    for _, group in board.groupby(COMPARISON, dropna=False):
        mixed, words = comparison_inits(group)
        board.loc[group.index, "mixed_init"], board.loc[group.index, "comparison_inits"] = mixed, words
        b = baseline_row(group, baseline)
        if b is None:
            board.loc[group.index, "diff_interval"] = "no baseline in this comparison"
            continue
        board.loc[group.index, "baseline"] = board.at[b, "backbone"]
        for i in group.index:
            if i == b:
                board.at[i, "diff_interval"] = "baseline"
                continue
            d = paired_difference(seeds[i], seeds[b])
            board.at[i, "miou_diff"], board.at[i, "diff_ci_low"], board.at[i, "diff_ci_high"] = \
                d["diff"], d["low"], d["high"]
            board.at[i, "diff_interval"] = d["interval"]
            board.at[i, "significant"] = pd.NA if d["significant"] is None else d["significant"]
    board = board.sort_values(COMPARISON + ["miou_mean"], ascending=[True] * len(COMPARISON) + [False],
                              na_position="last")
    cols = CELL + ["n_seeds", "n_not_ok", "selected", "rank", "mixed_init", "comparison_inits", "baseline", "miou_diff",
                   "diff_ci_low", "diff_ci_high", "diff_interval", "significant"] + \
        [f"{k}_{s}" for k in METRICS for s in ("mean", "std", "ci_low", "ci_high")]
    return board[cols].reset_index(drop=True)


def baseline_row(group: pd.DataFrame, baseline: str | None):
    """The index of a comparison's baseline row: the backbone of that display name, else the one
    row of its NAME (a world study's `depth@far` in the far world's comparison, when the baseline is
    `depth@base` or `depth`; bench/core/variants.py). None: no such row, or several of that NAME."""
    if baseline is None:
        return None
    exact = group.index[group["backbone"] == baseline]
    if len(exact):
        return exact[0]
    same_name = group.index[[base_name(b) == base_name(baseline) for b in group["backbone"]]]
    return same_name[0] if len(same_name) == 1 else None


def per_class_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per-class IoU (percent, mean over ok seeds) for each leaderboard row, one column per class."""
    rows = []
    for key, group in df[df["status"] == rf.OK].groupby(CELL, sort=False, dropna=False):
        ious = pd.DataFrame(list(group["per_class_iou"])).astype(float) * 100.0
        rows.append({**dict(zip(CELL, key)), "n_seeds": len(group), **ious.mean().to_dict()})
    return pd.DataFrame(rows)


def failures_table(df: pd.DataFrame) -> pd.DataFrame:
    bad = df[df["status"] != rf.OK]
    return bad[CELL + ["seed", "status", "error", "record"]].reset_index(drop=True)


def manifest_order(results_dir: Path) -> dict[str, list[str]]:
    """The orders the reports follow, from the folder's `manifest.resolved.json` (read once):
    `backbones` and `datasets` as display names (`NAME@LABEL` for a variant), `decoders` as
    listed. Each is [] where the folder has no readable resolved manifest, or it lacks that part."""
    try:
        resolved = json.loads(rf.resolved_manifest(results_dir).read_text())
    except (OSError, ValueError):
        resolved = {}

    def part(read) -> list[str]:
        try:
            return read()
        except (AttributeError, KeyError, TypeError):
            return []

    return {section: part(lambda: [display_name(e["name"], e.get("variant")) for e in resolved.get(section, [])])
            for section in ("backbones", "datasets")} | \
        {"decoders": part(lambda: list(resolved["transfer"]["decoders"]))}


def backbone_order(manifest_backbones: list[str], df: pd.DataFrame) -> list[str]:
    """Every backbone of the records in report order: the manifest's first, then those only the
    records name (added by `bench submit`), as they come."""
    return [*manifest_backbones, *(b for b in dict.fromkeys(df["backbone"]) if b not in manifest_backbones)]


def manifest_backbones(results_dir: Path) -> list[str]:
    """Backbone display names in manifest order (`manifest_order`)."""
    return manifest_order(results_dir)["backbones"]




def write_reports(results_dir, baseline: str | None = None, plots: bool = True, compare=None) -> dict:
    """Write leaderboard.csv/.md, per_class.csv, failures.csv, tables/, plots/ and report.html;
    `compare`: a published-number CSV (bench.report.compare), checked before anything is written.

    Serialised per results folder (an exclusive flock of `.aggregate.lock`, see bench.core.claims):
    drivers sharing the folder write their reports one after another, each from the records it
    reads once it holds the lock, so the reports written last cover every record present then
    (never an older driver's smaller set landing over a newer one's)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UserError(f"{results_dir}: results folder not found")
    from bench.report.compare import read_published

    published = (Path(compare), read_published(compare, METRICS)) if compare is not None else None
    with exclusive_lock(results_dir / rf.AGGREGATE_LOCK):
        return _write_reports(results_dir, baseline, plots, published)


def _write_reports(results_dir: Path, baseline: str | None, plots: bool, published=None) -> dict:
    df = records_frame(results_dir)
    if df.empty:
        raise UserError(f"{results_dir}: no run records under {rf.RUNS}/*/{rf.RECORD}")
    manifest = manifest_order(results_dir)
    order = backbone_order(manifest["backbones"], df)
    known = set(df["backbone"])
    if baseline is not None and baseline not in known | {base_name(b) for b in known}:
        raise UserError(f"--baseline {baseline!r} is not a backbone of {results_dir}; "
                        f"backbones: {', '.join(sorted(known))}")
    baseline = baseline or next((b for b in order if b in known), None)

    board = leaderboard(df, baseline)
    from bench.report.tables import all_tables, write_tables

    tables = all_tables(df, board, order, manifest["decoders"], manifest["datasets"], published)  # may refuse: before anything is written
    per_class, failures = per_class_table(df), failures_table(df)
    paths = {name: results_dir / name for name in
             (rf.LEADERBOARD_CSV, rf.LEADERBOARD_MD, rf.PER_CLASS_CSV, rf.FAILURES_CSV, rf.REPORT_HTML)}
    write_text_atomic(paths[rf.LEADERBOARD_CSV], board.to_csv(index=False, float_format="%.4f"))
    write_text_atomic(paths[rf.PER_CLASS_CSV], per_class.to_csv(index=False, float_format="%.4f"))
    write_text_atomic(paths[rf.FAILURES_CSV], failures.to_csv(index=False))
    # each comparison's Δ column names the baseline row it has (a world study's differs per world)
    sections = [(header, note, _display(rows, rows["baseline"].iloc[0]))
                for header, note, rows in _sections(board, mixed_versions(df))]
    markdown = "\n\n".join(f"### {header}\n\n{note}\n\n{shown.to_markdown(index=False)}"
                             for header, note, shown in sections)
    fail_md = failures.drop(columns=["record"]).to_markdown(index=False) if not failures.empty else "None."
    write_text_atomic(paths[rf.LEADERBOARD_MD], f"# Leaderboard: {results_dir.name}\n\n{_LEGEND.format(baseline=baseline)}"
                      f"\n\n{markdown}\n\n## Failed or diverged cells\n\n{fail_md}\n")
    table_files = write_tables(results_dir / rf.TABLES, tables)
    figures = _draw_figures(results_dir, board, df, order, manifest) if plots else []
    write_text_atomic(paths[rf.REPORT_HTML], render_report(results_dir, _LEGEND.format(baseline=baseline), sections,
                                                          failures, per_class,
                                                          [p for p in figures if p.suffix == ".png"]))
    return {"csv": paths[rf.LEADERBOARD_CSV], "md": paths[rf.LEADERBOARD_MD], "html": paths[rf.REPORT_HTML],
            "markdown": markdown, "frame": board, "plots": figures,
            "tables": table_files}


def _draw_figures(results_dir: Path, board: pd.DataFrame, df: pd.DataFrame, order: list[str],
                  manifest: dict) -> list[Path]:
    """Every figure of plots/ and cka/, in the report's order."""
    from bench.report.contrasts import plot_contrasts
    from bench.report.html import pretrain_histories
    from bench.report.layer_cka import cka_across_frame, pretrained_vs_finetuned
    from bench.report.plots import backbone_colours, plot_cka_across, plot_pretrain_losses, write_all
    from bench.report.qualitative import write_qualitative

    plots_dir = results_dir / rf.PLOTS
    figures = write_all(board, df, plots_dir, order)
    figures += [p for p in pretrained_vs_finetuned(results_dir, df) if p.suffix in (".png", ".svg")]
    figures += write_qualitative(df, plots_dir, order)
    colours = backbone_colours([*order, *df["backbone"].dropna()])
    figures += plot_cka_across(cka_across_frame(df), plots_dir, colours)
    figures += plot_contrasts(board, plots_dir, order, manifest["datasets"])
    figures += plot_pretrain_losses(pretrain_histories(results_dir), plots_dir, colours, results_dir.name)
    # `bench explain`'s figures: written by that verb, not here; every one present is shown (a cell
    # re-run since keeps its old figure until `bench explain` runs again).
    figures += sorted(plots_dir.glob("explain_*.png"))
    return figures


def where(table: dict) -> str:
    """The lines that tell a user where the reports are."""
    plots = table["plots"][0].parent if table["plots"] else None
    tables = table["tables"][0].parent if table.get("tables") else None
    return (f"leaderboard: {table['csv']}\n             {table['md']}\nreport:      {table['html']}"
            + (f"\ntables:      {tables}/ ({len(table['tables'])} files)" if tables else "")
            + (f"\nplots:       {plots}/ ({len(table['plots'])} files)" if plots else ""))


_LEGEND = ("Final-step metrics in percent over the seeds whose run is `ok`: mean ± sample std (`n`: seeds), and "
           "the 95 % confidence interval of the mean (Student t over seeds, clipped to [0, 100]; none for n = 1). "
           "`selected on validation`, where a sweep ran, is the candidate the validation split chose (the "
           "evaluation set scores only that one). `rank` orders the backbones of one comparison (dataset, protocol, decoder, init, train size); "
           "`effective init` is what the requested init became per backbone (none: random encoder; encoder: "
           "pre-trained encoder, fresh decoder; encoder+decoder: its pre-trained decoder reused too). `Δ {baseline}` "
           "is the mIoU difference to the baseline backbone (in a comparison without it, the one backbone of its name "
           "there, e.g. a world study's `depth@far`) with its paired 95 % interval: a paired t over the "
           "seeds both ran, or with one seed a paired bootstrap over the evaluation images (the same images "
           "resampled for both, mIoU recomputed from per-image counts); `*` marks an interval that excludes zero.")


def _sections(board: pd.DataFrame, mixed: dict[tuple, str]):
    """(header, note, rows) per comparison, in the board's order; `mixed`: `mixed_versions`."""
    for key, rows in board.groupby(COMPARISON, sort=False, dropna=False):
        dataset, protocol, decoder, init, train_size = key
        header = f"{dataset} · {protocol} · {decoder} · init {init} · {train_size} training images"
        if rows["mixed_init"].iloc[0]:
            note = ("**Mixed initialisations** (practice against practice, not encoders alone): "
                    f"{rows['comparison_inits'].iloc[0]}. `init: encoder` compares encoders with fresh decoders.")
        else:
            note = f"One initialisation: {rows['comparison_inits'].iloc[0]}."
        if key in mixed:
            note += f" **Library versions differ** between its records: {mixed[key]}."
        yield header, note, rows


def _display(board: pd.DataFrame, baseline) -> pd.DataFrame:
    shown = board[["backbone", "init_effective", "n_seeds", "n_not_ok", "rank"]].copy()
    shown.columns = ["backbone", "effective init", "n", "not ok", "rank"]
    shown["n"] = [f"n = {n}" for n in board["n_seeds"]]
    if board["selected"].astype(bool).any():  # a sweep: what validation chose, per row
        shown.insert(2, "selected on validation", board["selected"])
    for k in METRICS:
        shown[k] = [_fmt(m, s) for m, s in zip(board[f"{k}_mean"], board[f"{k}_std"])]
    shown["miou 95% CI"] = ["—" if math.isnan(lo) else f"[{lo:.2f}, {hi:.2f}]"
                            for lo, hi in zip(board["miou_ci_low"], board["miou_ci_high"])]
    shown[f"Δ {baseline}"] = [
        "baseline" if kind == "baseline" else "—" if math.isnan(d) else f"{d:+.2f}{' *' if sig is True else ''}"
        for d, sig, kind in zip(board["miou_diff"], board["significant"], board["diff_interval"])]
    shown["Δ 95% CI"] = ["" if math.isnan(lo) else f"[{lo:+.2f}, {hi:+.2f}]"
                         for lo, hi in zip(board["diff_ci_low"], board["diff_ci_high"])]
    shown["interval"] = ["" if kind == "baseline" else kind for kind in board["diff_interval"]]
    return shown


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"
