"""Tables in the papers' layout, derived from the records frame (`bench.report.aggregate.records_frame`).

- `miou_<dataset>` (one per dataset, and per requested init where a dataset ran several): rows are
  backbones in manifest order, columns protocol x decoder (x train size when there are several),
  as Lao et al. Table 1; cells mean ± sample std of mIoU over the seeds whose record is `ok`, the
  best mean of each column in bold, each row's effective initialisation beside it.
- `resolution_<dataset>` (only where the pre-training or transfer resolution varies, i.e. the
  records carry `pretrain_size` / `transfer_size` and they take several values): per protocol x
  decoder, rows backbone x pre-training size, columns transfer size (Lao et al. Table 5, "Depth"
  against "Depth-cropped", and Fig. 5, pre-train at one resolution, fine-tune at another).
- `contrast_<dataset>` (only for a dataset run in several variants, a world study): the baseline's
  advantage over every other backbone per variant, with paired intervals (bench/report/contrasts.py).

Both are written as Markdown and LaTeX (booktabs) under RESULTS/tables/ by `write_tables`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from bench.core import results_folder as rf
from bench.report.compare import compare_table
from bench.report.contrasts import contrast_tables
from bench.core.atomic import write_text_atomic
from bench.core.variants import base_name
from bench.report.statistics import t_interval
from bench.report.table_format import MARKS, TEX_PREAMBLE, Cell, Table, to_latex, to_markdown
from transfer.protocols import PROTOCOLS

INIT_WORDS = {"none": "random encoder", "encoder": "pre-trained encoder, fresh decoder",
              "encoder+decoder": "pre-trained encoder and its pre-trained decoder", "unknown": "no seed ran"}
LEGEND = ("Bold: the best mean of each column (ties all bold). —: not run; failed, diverged or skipped: no seed "
          "finished ok; (1 failed) and the like: seeds left out of the mean.")


def summarise(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per group of `keys`: mIoU mean and sample std over ok seeds (as the leaderboard), the number
    of ok seeds, the statuses of the others, and the effective inits its records name."""
    rows = []
    for key, group in df.groupby(keys, sort=False, dropna=False):
        ok = group[group["status"] == rf.OK]
        mean, std, _, _ = t_interval(ok["miou"])
        rows.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))), "mean": mean, "std": std,
                     "n": int(ok["seed"].nunique()), "not_ok": tuple(group.loc[group["status"] != rf.OK, "status"]),
                     "inits": tuple(dict.fromkeys(e for e in group["init_effective"] if e != "unknown"))})
    return pd.DataFrame(rows, columns=keys + ["mean", "std", "n", "not_ok", "inits"])


def common_n(summary: pd.DataFrame) -> int:
    """The number of seeds most cells have (the larger on a tie); others show theirs."""
    counts = Counter(n for n in summary["n"] if n > 0)
    return max(counts, key=lambda n: (counts[n], n)) if counts else 0


def value_cell(s, n_common: int) -> Cell:
    """`mean ± std`, `(n = k)` where k differs from the table's usual number, and the seeds left out."""
    left_out = ", ".join(f"{k} {status}" for status, k in Counter(s["not_ok"]).items())
    if s["n"] == 0:
        return Cell(", ".join(dict.fromkeys(s["not_ok"])) or "—")
    text = f"{s['mean']:.2f}" if math.isnan(s["std"]) else f"{s['mean']:.2f} ± {s['std']:.2f}"
    notes = ([f"n = {s['n']}"] if s["n"] != n_common else []) + ([left_out] if left_out else [])
    return Cell(text + (f" ({'; '.join(notes)})" if notes else ""))


def bold_best(cells: list[Cell], means: list[float]) -> None:
    """Bold the best mean of a column (as displayed, so that equal-looking numbers are equally bold);
    nothing to bold with fewer than two numbers."""
    shown = [round(m, 2) for m in means if not math.isnan(m)]
    if len(shown) < 2:
        return
    for cell, m in zip(cells, means):
        cell.bold = not math.isnan(m) and round(m, 2) == max(shown)


def pivot_cells(s: pd.DataFrame, index: list[str], columns: list[str], rows: list, cols: list):
    """The summary pivoted to rows x cols (pandas' pivot: one summary row per cell, in the given
    order): a `Cell` per position (— where nothing ran), its mean, and the first effective init its
    records name (NaN where none); the best mean of each column already bold."""
    n_common = common_n(s)
    s = s.assign(cell=[value_cell(r, n_common) for r in s.to_dict("records")],
                 first_init=[i[0] if i else None for i in s["inits"]])

    def pivot(values: str) -> pd.DataFrame:
        table = s.pivot(index=index, columns=columns, values=values)
        return table.reindex(index=pd.Index(rows, tupleize_cols=False) if len(index) == 1 else
                             pd.MultiIndex.from_tuples(rows), columns=pd.MultiIndex.from_tuples(cols)
                             if len(columns) > 1 else pd.Index(cols))

    cells, means, firsts = pivot("cell"), pivot("mean").astype(float), pivot("first_init")
    cells = cells.map(lambda c: c if isinstance(c, Cell) else Cell("—"))  # a fresh Cell per missing position
    for c in cells.columns:
        bold_best(list(cells[c]), list(means[c]))
    return cells, means, firsts


def _seeds_caption(n: int, varies: bool) -> str:
    seeds = f"{n} seed{'s' if n != 1 else ''}" + (" (n = k where a cell has another number)" if varies else "")
    return f"mean ± sample std over {seeds}" + ("; one seed: no std" if n == 1 else "")


def _ordered(values, order: list) -> list:
    values = list(dict.fromkeys(values))
    return [v for v in order if v in values] + sorted((v for v in values if v not in order), key=str)


def _rank(value, order) -> tuple:
    """Sort key: the position in `order`, then anything else by name."""
    order = list(order)
    return (order.index(value), "") if value in order else (len(order), str(value))


def _file_part(name) -> str:
    return re.sub(r"[^A-Za-z0-9_.@+-]+", "-", str(name))


def _reuses_decoder(init: str) -> bool:
    return init == "encoder+decoder"


# --- Lao et al. Table 1: backbones x (protocol, decoder, train size) ---------------------------------------------


def paper_tables(df: pd.DataFrame, order: list[str], decoders: list[str] | None = None) -> list[Table]:
    """One table per dataset (and per requested init where the dataset has several); with several
    datasets also `miou_across_datasets`, datasets as the outer column level (Lao et al. Table 6)."""
    summary = summarise(df, ["dataset", "init", "backbone", "protocol", "decoder", "train_size"])
    datasets = list(dict.fromkeys(summary["dataset"]))
    groups = [(f"miou_{_file_part(d)}", d, summary[summary["dataset"] == d], ["protocol", "decoder", "train_size"])
              for d in datasets]
    if len(datasets) > 1:
        groups.append(("miou_across_datasets", None, summary, ["dataset", "protocol", "decoder", "train_size"]))
    tables = []
    for stem, dataset, part, keys in groups:
        inits = list(dict.fromkeys(part["init"]))
        for init in inits:
            name = stem + (f"_init-{_file_part(init)}" if len(inits) > 1 else "")
            tables.append(_paper_table(name, dataset, init, part[part["init"] == init], keys, order, decoders or []))
    return tables


def _paper_table(name: str, dataset: str | None, init: str, s: pd.DataFrame, keys: list[str], order,
                 decoders) -> Table:
    """Rows: backbones; columns: the combinations of `keys` that ran, each level in its order."""
    sizes = sorted(s["train_size"].unique())
    ranks = {"dataset": list(dict.fromkeys(s["dataset"])), "protocol": PROTOCOLS, "decoder": decoders,
             "train_size": sizes}
    columns = sorted(dict.fromkeys(zip(*(s[k] for k in keys))),
                     key=lambda c: tuple(_rank(v, ranks[k]) for k, v in zip(keys, c)))
    backbones = _ordered(s["backbone"], order)
    n_common = common_n(s)
    cells, _, firsts = pivot_cells(s, ["backbone"], keys, backbones, columns)
    grid = {(b, c): cells.at[b, c] for b in backbones for c in columns}
    # (pandas holds a missing init as NaN: None here, so that `if init` reads "none known")
    row_inits = {b: {c: i if isinstance(i := firsts.at[b, c], str) else None for c in columns} for b in backbones}
    # A backbone whose effective init changes across columns (a reused U-Net decoder under monodepth2,
    # a fresh one under deeplabv3) says so in every cell, with a mark per init explained below.
    marks: dict[str, str] = {}
    labels = {}
    for b in backbones:
        known = list(dict.fromkeys(i for i in row_inits[b].values() if i))
        labels[b] = known[0] if len(known) == 1 else "mixed" if known else "unknown"
        if len(known) > 1:
            for c, i in row_inits[b].items():
                if i:
                    grid[b, c].mark = marks.setdefault(i, MARKS[min(len(marks), len(MARKS) - 1)])
    # (train_size is the last key: a level of its own only when it varies, else said in the caption)
    header = [tuple(c[:-1]) + ((f"{c[-1]} images",) if len(sizes) > 1 else ()) for c in columns]
    mixed = [" · ".join(h) for h, c in zip(header, columns)
             if len({_reuses_decoder(row_inits[b][c]) for b in backbones if row_inits[b][c]}) > 1]
    n_text = _seeds_caption(n_common, (s.loc[s["n"] > 0, "n"] != n_common).any())
    caption = (f"mIoU (%) on the evaluation set of {dataset or 'each dataset'}, requested init {init}"
               + (f", {sizes[0]} training images" if len(sizes) == 1 else "") + f"; {n_text}. {LEGEND}")
    notes = [f"Effective init: {'; '.join(f'{i}: {INIT_WORDS.get(i, i)}' for i in dict.fromkeys(labels.values()) if i != 'mixed')}."]
    if marks:
        notes.append("Mixed rows: " + "; ".join(f"{m} {i} ({INIT_WORDS.get(i, i)})" for i, m in marks.items()) + ".")
    if mixed:
        notes.append(f"Columns mixing decoder reuse (practice against practice, as Lao et al. Table 1, not encoders "
                     f"alone as their Table 3, init: encoder): {', '.join(mixed)}.")
    return Table(name=name, title=f"mIoU on {dataset or ', '.join(ranks['dataset'])}, init {init}", caption=caption,
                 labels=["backbone", "effective init"], columns=header,
                 rows=[([b, labels[b]], [grid[b, c] for c in columns]) for b in backbones], notes=notes)


# --- Lao et al. Table 5 / Fig. 5: pre-training size x transfer size ----------------------------------------------


def _size_key(size) -> tuple:
    if not isinstance(size, str) or not size:
        return (0, 0, "")
    m = re.fullmatch(r"(\d+)x(\d+)", size)
    return (1, int(m.group(1)) * int(m.group(2)), size) if m else (2, 0, size)


def _size_label(size) -> str:
    return size if isinstance(size, str) and size else "—"


def resolution_tables(df: pd.DataFrame, order: list[str]) -> dict[str, list[Table]]:
    """`resolution_<dataset>` -> one table per protocol x decoder (x init, train size), for every
    dataset (NAME, its variants together) whose pre-training or transfer sizes vary; {} otherwise."""
    needed = {"pretrain_size", "transfer_size", "backbone_variant", "dataset_variant"}
    if df.empty or not needed <= set(df.columns):
        return {}
    # A record that never ran (failed before its data or checkpoint resolved) names no size: it takes
    # the size its backbone's (dataset's) other records name, so that it lands in its own cell.
    for column, owner in (("pretrain_size", "backbone"), ("transfer_size", "dataset")):
        known = df.dropna(subset=[column]).groupby(owner)[column].first()
        df = df.assign(**{column: df[column].where(df[column].notna(), df[owner].map(known))})
    # NAME of each display name, so that a backbone's (a dataset's) variants share a row (column) group
    df = df.assign(backbone_base=[base_name(b) for b in df["backbone"]],
                   dataset_base=[base_name(d) for d in df["dataset"]],
                   pretrain_label=[_size_label(v) for v in df["pretrain_size"]],
                   transfer_label=[_size_label(v) for v in df["transfer_size"]])
    # Two variants of one backbone at the same size (another learning rate, say) are different
    # rows: they keep their display names rather than being averaged together. Same for columns.
    for base, label, display in (("backbone_base", "pretrain_label", "backbone"),
                                 ("dataset_base", "transfer_label", "dataset")):
        shared = df.groupby([base, label])[display].transform("nunique") > 1
        df.loc[shared, label] = df.loc[shared, label] + " (" + df.loc[shared, display] + ")"
    out = {}
    for dataset, of_dataset in df.groupby("dataset_base", sort=False):
        # Sizes that differ only between different backbones (a depth network on driving frames, a
        # classifier on crops) are no resolution study: a backbone's variants or the dataset's must vary.
        if (of_dataset.groupby("backbone_base")["pretrain_size"].nunique() < 2).all() \
                and of_dataset["transfer_size"].nunique() < 2:
            continue
        name = f"resolution_{_file_part(dataset)}"
        sections = ["protocol", "decoder", "init", "train_size"]
        summary = summarise(of_dataset, sections + ["backbone_base", "pretrain_label", "transfer_label"])
        sizes = dict(zip(of_dataset["pretrain_label"], of_dataset["pretrain_size"]))
        tsizes = dict(zip(of_dataset["transfer_label"], of_dataset["transfer_size"]))
        base_order = list(dict.fromkeys(base_name(b) for b in order))
        keys = sorted(dict.fromkeys(zip(*(summary[k] for k in sections))),
                      key=lambda k: (_rank(k[0], PROTOCOLS), str(k[1]), str(k[2]), k[3]))
        out[name] = []
        for i, key in enumerate(keys):
            part = summary[(summary[sections] == pd.Series(key, index=sections)).all(axis=1)]
            out[name].append(_resolution_table(f"{name}_{i}", dataset, key, part, base_order, sizes, tsizes))
    return out


def _resolution_table(name, dataset, key, s: pd.DataFrame, base_order, sizes, tsizes) -> Table:
    protocol, decoder, init, train_size = key
    rows = sorted(dict.fromkeys(zip(s["backbone_base"], s["pretrain_label"])),
                  key=lambda r: (_rank(r[0], base_order), _size_key(sizes.get(r[1]))))
    columns = sorted(dict.fromkeys(s["transfer_label"]), key=lambda c: _size_key(tsizes.get(c)))
    n_common = common_n(s)
    cells, _, _ = pivot_cells(s, ["backbone_base", "pretrain_label"], ["transfer_label"], rows, columns)
    grid = {(r, c): cells.at[r, c] for r in rows for c in columns}
    caption = (f"mIoU (%) on the evaluation set of {dataset}: rows pre-training resolution (the backbone's "
               f"variants), columns transfer resolution (the dataset's variants); {protocol} · {decoder}, init "
               f"{init}, {train_size} training images; {_seeds_caption(n_common, (s.loc[s['n'] > 0, 'n'] != n_common).any())}. "
               f"{LEGEND}")
    return Table(name=name, title=f"mIoU on {dataset} by resolution: {protocol} · {decoder} · init {init} · "
                                  f"{train_size} training images", caption=caption,
                 labels=["backbone", "pre-train size"], columns=[(f"transfer {c}",) for c in columns],
                 rows=[(list(r), [grid[r, c] for c in columns]) for r in rows])


# --- all of them -------------------------------------------------------------------------------------------------


def all_tables(df: pd.DataFrame, board: pd.DataFrame, order: list[str], decoders: list[str] = (),
               dataset_order: list[str] = (), compare: tuple[Path, pd.DataFrame] | None = None
               ) -> dict[str, list[Table]]:
    """File stem -> its tables: the paper-layout ones, the resolution ones where sizes vary, the
    contrasts where a dataset ran in several variants, and with `compare` (the CSV's path and its
    `read_published` rows) the comparison. `order`, `decoders` and `dataset_order` are the
    manifest's (`bench.report.aggregate.manifest_order`). Writes nothing, so a comparison that cannot be
    matched refuses before any report is replaced."""
    files = {t.name: [t] for t in paper_tables(df, order, list(decoders))}
    files.update(resolution_tables(df, order))
    files.update(contrast_tables(board, order, dataset_order))
    if compare is not None:
        table, _ = compare_table(compare[0], compare[1], board)
        files[table.name] = [table]
    return files


# --- files ---------------------------------------------------------------------------------------------------------


PREFIXES = ("miou_", "resolution_", "compare_", "contrast_")  # the tables this module derives (others' files are left alone)


def write_tables(folder: Path, files: dict[str, list[Table]]) -> list[Path]:
    """Write `<name>.md` and `<name>.tex` per entry; remove the tables of ours a previous aggregation
    left that this one no longer derives (they come from the records, like the leaderboard)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, tables in files.items():
        md = "\n".join(to_markdown(t) for t in tables)
        tex = TEX_PREAMBLE + "\n\n" + "\n".join(to_latex(t) for t in tables)
        for suffix, text in ((".md", md), (".tex", tex)):
            write_text_atomic(folder / f"{name}{suffix}", text)
            written.append(folder / f"{name}{suffix}")
    ours = [f"{prefix}*{suffix}" for prefix in PREFIXES for suffix in (".md", ".tex")]
    for stale in sorted({p for pattern in ours for p in folder.glob(pattern)} - set(written)):
        stale.unlink()
    return written
