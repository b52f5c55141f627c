"""`bench explain RUN`: Grad-CAM overlays of cells kept with `keep_weights` (bench.report.explain)."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    e = sub.add_parser("explain", help="Grad-CAM overlays of cells kept with keep_weights", description=
                       "Rebuilds each cell's model from its kept weights (a frozen or linear cell's head on its "
                       "checkpoint's encoder, checked by sha256) and writes, under RUN/explain/ (a cell folder) or "
                       "each cell's runs/CELL/explain/ (a results folder: every cell with kept weights), the "
                       "Grad-CAM of the first N evaluation images at one layer, as overlays LAYER_eval<index>.png "
                       "and the maps in LAYER.npz; for a results folder also one figure per comparison, the "
                       "backbones side by side, as RESULTS/plots/explain_LAYER_<comparison>.png/.svg. The target "
                       "is the sum over pixels of each pixel's predicted-class score (Lao et al. Fig. 6).")
    e.add_argument("run", help="a cell folder (runs/CELL) or a results folder")
    e.add_argument("--images", type=int, default=4, help="the first N evaluation images (default: 4)")
    e.add_argument("--layer", default="act1", help="encoder module to explain, e.g. act1 (the stem, before "
                   "pooling: the shallow layer of Lao et al.), layer1, layer1.0.conv1; decoder.NAME for a decoder "
                   "module (default: act1)")
    e.add_argument("--root", help="the dataset folder, where it is no longer where the cells ran")
    e.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    e.set_defaults(fn=main)


def main(args) -> int:
    from bench.report.explain_grid import explain

    written, figures = explain(Path(args.run), args.images, args.layer, root=args.root, device=args.device)
    for cell, paths in written.items():
        print(f"{cell.name}: {len(paths) - 1} overlays -> {cell / 'explain'}/")
    for figure in figures:
        print(f"figure: {figure}")
    return 0
