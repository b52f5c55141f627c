"""Qualitative grids (Lao et al. Fig. 6): image | ground truth | each backbone's prediction.

One figure per comparison (dataset, protocol, decoder, init, train size), from the first seed
that has an `ok` cell: one row per image every cell saved (transfer/predictions.py: the same
evenly spaced evaluation images for every cell of a dataset), the columns the image, its ground
truth and the prediction of each backbone in manifest order, coloured with the dataset's palette,
with a legend of the classes shown. Drawn from the results folder alone (`runs/*/predictions/`).
A backbone whose cell saved no predictions (run before cells saved them, or of another version
of the cell) is left out, and the figure's title says which.

`comparison_grid` composes the panels (plain RGB arrays: what the tests read), `mosaic` puts them
in one picture and `draw_grid` frames it with titles and a legend; `write_qualitative` does both for every comparison of a records frame,
writing `plots/qualitative_<slug>.png/.svg`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bench.core import results_folder as rf
from bench.core.records import COMPARISON, read_json
from transfer.predictions import PREDICTIONS_SCHEMA, palette_table

PANEL_WIDTH_IN = 2.4
MAX_LEGEND_CLASSES = 40


@dataclass
class Grid:
    title: str
    columns: list[str]  # "image", "ground truth", then the backbones shown
    rows: list[tuple[str, list[np.ndarray]]]  # (stem, H x W x 3 uint8 panels, one per column)
    classes: list[tuple[str, tuple[int, int, int]]]  # the classes the panels show, with their colours
    missing: list[str] = field(default_factory=list)  # backbones left out: no saved predictions
    ignore: tuple[int, int, int] | None = None  # the colour of unscored pixels, where the ground truth has some
    missing_reason: str = "no saved predictions (older runs)"  # what the title says of them


def saved_predictions(run_dir: Path, fingerprint: str | None) -> dict | None:
    """A cell folder's `predictions/predictions.json`, or None (none saved, or another version's)."""
    document = read_json(Path(run_dir) / rf.PREDICTIONS / rf.PREDICTIONS_INDEX)
    if not document or document.get("schema") != PREDICTIONS_SCHEMA or document.get("fingerprint") != fingerprint:
        return None
    return document


def _indices(path: Path) -> np.ndarray:
    """The stored indices of a palette PNG (its classes), never its colours."""
    with Image.open(path) as image:
        if image.mode != "P":
            raise ValueError(f"{path}: not a palette PNG")
        return np.asarray(image)


def colour(labels: np.ndarray, palette: list, ignore_index: int, ignore_colour) -> np.ndarray:
    """H x W x 3 uint8: each class index in its palette colour, `ignore_index` in `ignore_colour`."""
    return palette_table(palette, ignore_index, ignore_colour)[labels]


def first_seed_cells(rows: pd.DataFrame, order: list[str]) -> tuple[int, pd.DataFrame, list[str]] | None:
    """A comparison's first seed with an `ok` cell, its ok rows, and their backbones in `order`
    (backbones not in it after, in record order); None when no cell is ok."""
    ok = rows[rows["status"] == rf.OK]
    if ok.empty:
        return None
    seed = ok["seed"].min()
    first = ok[ok["seed"] == seed]
    backbones = [b for b in order if b in set(first["backbone"])]
    backbones += [b for b in dict.fromkeys(first["backbone"]) if b not in backbones]
    return seed, first, backbones


def comparison_words(first: pd.DataFrame, seed) -> str:
    """The comparison in words, for a figure's title."""
    dataset, protocol, decoder, init, train_size = (first.iloc[0][k] for k in COMPARISON)
    return f"{dataset} · {protocol} · {decoder} · init {init} · {train_size} training images (seed {seed})"


def comparison_slug(key) -> str:
    """A comparison's (dataset, protocol, decoder, init, train size) as a file-name part."""
    from bench.report.plots import _slug

    dataset, protocol, decoder, init, train_size = key
    return _slug(f"{dataset}_{protocol}_{decoder}_{init}_n{train_size}")


def comparison_grid(rows: pd.DataFrame, order: list[str]) -> Grid | None:
    """The grid of one comparison's records-frame rows (None when no cell saved predictions)."""
    cells = first_seed_cells(rows, order)
    if cells is None:
        return None
    seed, first, backbones = cells
    saved: dict[str, tuple[Path, dict]] = {}
    for b in backbones:
        row = first[first["backbone"] == b].iloc[0]
        run_dir = Path(row["record"]).parent
        document = saved_predictions(run_dir, (row["config"] or {}).get("fingerprint"))
        if document is not None:
            saved[b] = (run_dir / rf.PREDICTIONS, document)
    if not saved:
        return None
    reference_dir, reference = next(iter(saved.values()))
    images = [(e["index"], e["stem"]) for e in reference["images"]]
    shown = [b for b in backbones if b in saved and [(e["index"], e["stem"]) for e in saved[b][1]["images"]] == images]
    palette, ignore_index = reference["palette"], int(reference["ignore_index"])
    ignore = tuple(reference["ignore_colour"])
    grid_rows, present, has_ignore = [], set(), False
    for j, entry in enumerate(reference["images"]):
        with Image.open(reference_dir / entry["image"]) as im:
            image = np.asarray(im.convert("RGB"))
        truth = _indices(reference_dir / entry["label"])
        labels = [truth] + [_indices(saved[b][0] / saved[b][1]["images"][j]["prediction"]) for b in shown]
        for lab in labels:
            present |= set(np.unique(lab).tolist())
        has_ignore |= bool((truth == ignore_index).any())
        grid_rows.append((entry["stem"], [image] + [colour(lab, palette, ignore_index, ignore) for lab in labels]))
    names = reference["class_names"]
    classes = [(names[c], tuple(palette[c])) for c in sorted(present) if c < len(names)]
    title = f"{comparison_words(first, seed)}: evaluation images, ground truth and each backbone's prediction"
    return Grid(title, ["image", "ground truth", *shown], grid_rows, classes,
                [b for b in backbones if b not in shown], ignore if has_ignore else None)


def grid_title(grid: Grid) -> str:
    """The figure's title: the comparison, and the backbones left out (for want of saved predictions,
    or of kept weights in `bench explain`'s)."""
    missing = f"\nleft out, {grid.missing_reason}: {', '.join(grid.missing)}" if grid.missing else ""
    return grid.title + missing


GAP = 4  # white pixels between panels of the mosaic


def mosaic(grid: Grid, gap: int = GAP) -> np.ndarray:
    """The panels as one H x W x 3 uint8 picture, rows and columns `gap` white pixels apart; every
    panel at the first one's size (images of other sizes are resized: bilinear for the image,
    nearest neighbour for the label colours)."""
    height, width = grid.rows[0][1][0].shape[:2]
    n_rows, n_cols = len(grid.rows), len(grid.columns)
    out = np.full((n_rows * (height + gap) - gap, n_cols * (width + gap) - gap, 3), 255, dtype=np.uint8)
    for r, (_, panels) in enumerate(grid.rows):
        for c, panel in enumerate(panels):
            if panel.shape[:2] != (height, width):
                panel = np.asarray(Image.fromarray(panel).resize((width, height),
                                                                 Image.BILINEAR if c == 0 else Image.NEAREST))
            top, left = r * (height + gap), c * (width + gap)
            out[top:top + height, left:left + width] = panel
    return out


def class_legend(fig, grid: Grid) -> None:
    """The qualitative grids' key: the classes shown (and "not scored"), right of the mosaic."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=np.array(rgb) / 255.0, edgecolor="0.3", label=name)
               for name, rgb in grid.classes[:MAX_LEGEND_CLASSES]]
    if grid.ignore is not None:
        handles.append(Patch(facecolor=np.array(grid.ignore) / 255.0, edgecolor="0.3", label="not scored"))
    fig.legend(handles=handles, title="class", loc="outside right upper", frameon=False, fontsize=8)


def draw_grid(grid: Grid, path_stem: Path, key=class_legend, subject: str | None = None) -> list[Path]:
    """The grid as a figure: the mosaic with column titles, image names on the left, and `key(fig,
    grid)` beside it (the class legend; `bench explain` draws a colour bar), one image in one axes
    (a panel per axes costs seconds per figure)."""
    from bench.report.plots import _figure, _save, _style

    picture = mosaic(grid)
    height, width = grid.rows[0][1][0].shape[:2]
    n_cols = len(grid.columns)
    with _style():
        fig, axes = _figure(1, 1, PANEL_WIDTH_IN * n_cols, PANEL_WIDTH_IN * n_cols * picture.shape[0] / picture.shape[1])
        ax = axes[0, 0]
        ax.imshow(picture, interpolation="nearest")
        ax.grid(False)
        ax.set_xticks([(width + GAP) * c + width / 2 for c in range(n_cols)], grid.columns, fontsize=9)
        ax.xaxis.tick_top()
        ax.set_yticks([(height + GAP) * r + height / 2 for r in range(len(grid.rows))],
                      [stem for stem, _ in grid.rows], fontsize=7)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        key(fig, grid)
        fig.suptitle(grid_title(grid), fontsize=9)
        return _save(fig, path_stem, subject)


def write_qualitative(records: pd.DataFrame, plots_dir, order: list[str]) -> list[Path]:
    """`plots/qualitative_<slug>.png/.svg` for every comparison whose cells saved predictions."""
    paths: list[Path] = []
    for key, rows in records.groupby(COMPARISON, sort=False, dropna=False):
        grid = comparison_grid(rows, order)
        if grid is not None:
            paths += draw_grid(grid, Path(plots_dir) / f"qualitative_{comparison_slug(key)}")
    return paths
