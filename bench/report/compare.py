"""`bench aggregate RESULTS --compare FILE.csv`: our numbers beside published ones.

The CSV (contract 2 of issue 18; configs/paper/*.csv) has exactly the columns
`backbone,dataset,protocol,decoder,train_size,metric,published,source`. `read_published` checks
every row before anything is written (an error names the file, the row and the column);
`compare_table` matches each row with the leaderboard on (backbone, dataset, protocol, decoder,
train_size) and gives ours (mean ± std over ok seeds), the published number, the difference
(ours - published) and the source. A published row we did not run stays in the table as
"not run": nothing is dropped silently.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pandas as pd

from bench.core.errors import UserError
from bench.report.table_format import Cell, Table

COLUMNS = ["backbone", "dataset", "protocol", "decoder", "train_size", "metric", "published", "source"]
MATCH = ["backbone", "dataset", "protocol", "decoder", "train_size"]


def read_published(path, metrics) -> pd.DataFrame:
    """The published rows, validated; `train_size` an int or None (the comparison's only size),
    `row`/`line` where each came from (for the errors that matching may raise later)."""
    from transfer.protocols import PROTOCOLS  # here: it imports torch, which plain aggregation need not

    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            missing, unknown = [c for c in COLUMNS if c not in header], [c for c in header if c not in COLUMNS]
            if missing or unknown:
                raise UserError(f"{path}: " + "; ".join(
                    ([f"missing column(s) {', '.join(missing)}"] if missing else [])
                    + ([f"unknown column(s) {', '.join(unknown)}"] if unknown else []))
                    + f" (expected exactly {','.join(COLUMNS)})")
            reader.fieldnames = header
            rows = [_row(path, k, reader.line_num, raw, metrics, PROTOCOLS) for k, raw in enumerate(reader, start=1)]
    except FileNotFoundError:
        raise UserError(f"{path}: published-number CSV not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: cannot read the published-number CSV ({exc})") from None
    seen = {}
    for r in rows:
        key = tuple(r[c] for c in MATCH + ["metric"])
        if key in seen:
            raise UserError(f"{path}, row {r['row']} (line {r['line']}): the same cell and metric as row {seen[key]}")
        seen[key] = r["row"]
    # object: train_size stays an int or None (pandas would make it float with NaN)
    return pd.DataFrame(rows, columns=COLUMNS + ["published_text", "row", "line"], dtype=object)


def _row(path: Path, k: int, line: int, raw: dict, metrics, protocols) -> dict:
    def fail(column: str, problem: str):
        raise UserError(f"{path}, row {k} (line {line}), column {column}: {problem}")

    if None in raw:  # more fields than the header has
        fail(COLUMNS[-1], f"{len(raw[None])} field(s) beyond the {len(COLUMNS)} columns (quote a comma in a source)")
    row = {c: (raw.get(c) or "").strip() for c in COLUMNS}
    for c in ("backbone", "dataset", "protocol", "decoder", "metric", "published", "source"):
        if not row[c]:
            fail(c, "empty")
    if row["protocol"] not in protocols:
        fail("protocol", f"unknown protocol {row['protocol']!r} (one of {', '.join(protocols)})")
    if row["metric"] not in metrics:
        fail("metric", f"unknown metric {row['metric']!r} (one of {', '.join(metrics)})")
    row["published_text"] = row["published"]  # shown as the paper prints it (53.6, 50.20)
    try:
        row["published"] = float(row["published"])
    except ValueError:
        fail("published", f"{row['published']!r} is not a number")
    if not math.isfinite(row["published"]):
        fail("published", f"{row['published']} is not a finite number")
    if row["train_size"]:
        if not row["train_size"].isdigit() or int(row["train_size"]) < 1:
            fail("train_size", f"{row['train_size']!r} is not a positive integer (or empty for the whole pool)")
        row["train_size"] = int(row["train_size"])
    else:
        row["train_size"] = None
    return {**row, "row": k, "line": line}


def compare_table(path, published: pd.DataFrame, board: pd.DataFrame) -> tuple[Table, pd.DataFrame]:
    """The comparison table `compare_<csvstem>` and its frame (one row per published row, or per
    requested init where our results ran several for it)."""
    path = Path(path)
    out = []
    for p in published.to_dict("records"):
        same = board[(board["backbone"] == p["backbone"]) & (board["dataset"] == p["dataset"])
                     & (board["protocol"] == p["protocol"]) & (board["decoder"] == p["decoder"])]
        size = p["train_size"]
        if size is None:  # the whole training pool: the one size this comparison ran
            sizes = sorted(set(same["train_size"]))
            if len(sizes) > 1:
                raise UserError(f"{path}, row {p['row']} (line {p['line']}), column train_size: empty, but "
                                f"{p['backbone']} on {p['dataset']} ({p['protocol']}, {p['decoder']}) ran train "
                                f"sizes {', '.join(map(str, sizes))}; give the size")
            size = sizes[0] if sizes else None
        matched = same[same["train_size"] == size] if size is not None else same.iloc[:0]
        base = {**{c: p[c] for c in MATCH}, "train_size": size, "metric": p["metric"], "published": p["published"],
                "published_text": p["published_text"], "source": p["source"], "row": p["row"]}
        if matched.empty:
            out.append({**base, "init": "", "init_effective": "", "n_seeds": 0, "ours": math.nan,
                        "ours_std": math.nan, "difference": math.nan, "status": "not run"})
        for _, m in matched.iterrows():
            ours = m[f"{p['metric']}_mean"]
            status = "ok" if m["n_seeds"] > 0 else "no ok seed"
            out.append({**base, "init": m["init"], "init_effective": m["init_effective"], "n_seeds": int(m["n_seeds"]),
                        "ours": ours, "ours_std": m[f"{p['metric']}_std"], "difference": ours - p["published"],
                        "status": status})
    # A header alone is a figure published as a plot only (Lao et al. Fig. 8): an empty comparison.
    frame = pd.DataFrame(out, columns=MATCH + ["metric", "published", "published_text", "source", "init",
                                               "init_effective", "n_seeds", "ours", "ours_std", "difference", "status", "row"])
    return _table(path, frame), frame


def _table(path: Path, frame: pd.DataFrame) -> Table:
    rows = []
    for r in frame.to_dict("records"):
        if r["status"] == "not run":
            ours, diff = "not run", "—"
        elif r["n_seeds"] == 0:
            ours, diff = "no ok seed", "—"
        else:
            ours = f"{r['ours']:.2f}" if math.isnan(r["ours_std"]) else f"{r['ours']:.2f} ± {r['ours_std']:.2f}"
            ours += f" (n = {r['n_seeds']})"
            diff = f"{r['difference']:+.2f}"
        init = f"{r['init']} ({r['init_effective']})" if r["init"] else "—"
        size = "—" if r["train_size"] is None else str(r["train_size"])
        rows.append(([r["backbone"], r["dataset"], r["protocol"], r["decoder"], size, init, r["metric"]],
                     [Cell(ours), Cell(r["published_text"]), Cell(diff), Cell(r["source"])]))
    not_run = frame[frame["status"] == "not run"]
    where = sorted(set(not_run["backbone"] + " on " + not_run["dataset"]))
    if frame.empty:
        notes = ["The file holds no published rows (a figure published as a plot only)."]
    else:
        matched = frame.loc[frame["status"] != "not run", "row"].nunique()  # a row may match several inits
        notes = [f"Matched {matched} of {frame['row'].nunique()} published rows; "
                 + (f"not run here: {len(not_run)} ({', '.join(where)})." if len(not_run) else
                    "every published row has a result here.")]
    return Table(name=f"compare_{path.stem}", title=f"Ours against published: {path.name}",
                 caption=("Ours: mean ± sample std over the seeds whose record is ok, in percent like the "
                          "leaderboard; difference = ours - published; init: requested (effective)."),
                 labels=["backbone", "dataset", "protocol", "decoder", "train size", "init", "metric"],
                 columns=[("ours",), ("published",), ("difference",), ("source",)], rows=rows, notes=notes)
