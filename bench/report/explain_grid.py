"""`bench explain` on a results folder: one Grad-CAM figure per comparison (Lao et al. Fig. 6).

For every comparison (dataset, protocol, decoder, init, train size), from its first seed with an
`ok` cell (as the qualitative grids, bench/report/qualitative.py, whose Grid, mosaic and title it reuses):
one row per explained image, the columns the image and each backbone's Grad-CAM overlay in
manifest order, exactly the cell's `explain/<layer>_eval<index>.png`, with a colour bar for the
map's scale (each map divided by its maximum: 0..1 per image). A backbone whose cell was not
explained (kept no weights) is left out and the title names it. Written as
`plots/explain_<layer>_<comparison slug>.png/.svg`, which `bench aggregate`'s report.html picks up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bench.core import results_folder as rf
from bench.core.records import COMPARISON, read_json
from bench.core.errors import UserError
from bench.report.explain import COLOURMAP, cell_folders, explain_cell, first_eval_images, layer_file_part
from bench.report.qualitative import (Grid, comparison_slug, comparison_words, draw_grid,
                               first_seed_cells)

PREFIX = "explain_"
SCALE_LABEL = "Grad-CAM / its max\n(0..1 per image)"  # each map divided by its own maximum


def explain_grid(rows: pd.DataFrame, order: list[str], layer: str, explained: set[Path], root=None) -> Grid | None:
    """The figure of one comparison's records-frame rows; `explained`: the cell folders (resolved)
    that `bench explain` explained at `layer`. None when none of the comparison's was."""
    cells = first_seed_cells(rows, order)
    if cells is None:
        return None
    seed, first, backbones = cells
    part = layer_file_part(layer)
    maps: dict[str, tuple[Path, list[int], list[str]]] = {}
    for b in backbones:
        run_dir = Path(first[first["backbone"] == b].iloc[0]["record"]).parent
        if run_dir.resolve() in explained:
            with np.load(run_dir / rf.EXPLAIN / f"{part}.npz") as arrays:
                maps[b] = (run_dir, arrays["indices"].tolist(), arrays["stems"].tolist())
    if not maps:
        return None
    reference_dir, indices, stems = next(iter(maps.values()))
    shown = [b for b in backbones if b in maps and maps[b][1:] == (indices, stems)]
    # The same first evaluation images for every cell of a dataset (bench.report.explain.first_eval_images).
    images = first_eval_images(read_json(reference_dir / rf.RECORD), max(indices) + 1, root)
    grid_rows = []
    for i, stem in zip(indices, stems):
        panels = [images.items[i][0]]
        for b in shown:
            with Image.open(maps[b][0] / rf.EXPLAIN / f"{part}_eval{i:05d}.png") as im:
                panels.append(np.asarray(im.convert("RGB")))
        grid_rows.append((stem, panels))
    title = f"{comparison_words(first, seed)}: Grad-CAM of layer {layer} for each backbone"
    return Grid(title, ["image", *shown], grid_rows, [], [b for b in backbones if b not in shown],
                missing_reason="no kept weights")


def colour_bar(fig, grid: Grid) -> None:
    """The maps' scale beside the mosaic: `jet` from 0 to 1 (each map divided by its maximum)."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), colormaps[COLOURMAP]), ax=fig.axes[0],
                       shrink=0.6, location="right")
    bar.set_label(SCALE_LABEL, fontsize=7)


def write_explain_grids(results_dir: Path, layer: str, explained, root=None) -> list[Path]:
    """`plots/explain_<layer>_<slug>.png/.svg` for every comparison with an explained cell."""
    from bench.report.aggregate import backbone_order, manifest_backbones, records_frame
    from bench.report.plots import _slug

    results_dir = Path(results_dir)
    done = {Path(p).resolve() for p in explained}
    df = records_frame(results_dir)
    order = backbone_order(manifest_backbones(results_dir), df)
    paths: list[Path] = []
    for key, rows in df.groupby(COMPARISON, sort=False, dropna=False):
        grid = explain_grid(rows, order, layer, done, root)
        if grid is not None:
            dataset, protocol, decoder, init, train_size = key
            subject = (f"layer {layer} on {dataset}, {protocol}, {decoder} decoder, init {init}, "
                       f"{train_size} training images")
            paths += draw_grid(grid, results_dir / rf.PLOTS / f"{PREFIX}{_slug(layer)}_{comparison_slug(key)}",
                               key=colour_bar, subject=subject)
    return paths


def explain(run, images: int, layer: str, *, root=None, device: str = "cpu") -> tuple[dict[Path, list[Path]], list[Path]]:
    """`bench explain`: per cell folder explained, the files written; and, for a results folder, the
    comparison figures written under plots/ (bench.report.explain_grid)."""
    if images < 1:
        raise UserError(f"--images must be at least 1, not {images}")
    run = Path(run)
    written = {cell: explain_cell(cell, images, layer, root=root, device=device) for cell in cell_folders(run)}
    if (run / rf.RECORD).is_file():
        return written, []
    return written, write_explain_grids(run, layer, written, root)
