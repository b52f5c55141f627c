"""Layer-wise CKA between two encoders on a dataset's evaluation images (MeSa's analyses).

- pre-trained versus fine-tuned (`a` = a pre-training checkpoint, `b` = a transfer cell kept with
  `keep_weights`): the diagonal shows which layers fine-tuning rewrote;
- within one model (`b` omitted): every layer against every other; its first row is MeSa's
  "layer 0 versus all".
Features are taken with forward hooks at the preset's layers and reduced by global average
pooling by default (`reduce`: mean | flatten | subsample, see `bench.core.cka.reduce_spatial`).
The maths (`layer_cka`) lives in `bench.core.cka`, shared with the transfer stage, which stores
each full cell's pre-trained vs fine-tuned matrix as `cka.json` (transfer/similarity.py): the
report's heatmaps come from those, and from kept weights only for cells run before them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.core import results_folder as rf
from bench.core.atomic import write_text_atomic
from bench.core.checkpoint import read_checkpoint_meta
from bench.core.cka import encoder_from_checkpoint, layer_cka
from bench.core.errors import UserError
from bench.core.kept_weights import verified_checkpoint
from bench.core.records import COMPARISON, read_json

__all__ = ["resolve_weights", "load_encoder", "layer_cka", "dataset_batches", "write_cka", "pretrained_vs_finetuned",
           "cka_across_frame"]

WEIGHT_FILES = (rf.KEPT_WEIGHTS, rf.CHECKPOINT)  # a transfer cell's, a pre-training's


def resolve_weights(path) -> Path:
    """A checkpoint file, or a run / pre-training folder holding one."""
    path = Path(path)
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise UserError(f"{path}: no {' or '.join(WEIGHT_FILES)} here (keep a transfer cell's weights with "
                        f"`transfer: {{keep_weights: true}}` in the manifest)")
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    return path


def load_encoder(path) -> torch.nn.Module:
    """The encoder of a checkpoint, or of a cell's kept weights: a full cell's fine-tuned one; for a
    frozen or linear cell, which keeps its head only, its checkpoint's (checked by sha256)."""
    path = resolve_weights(path)
    kept = read_checkpoint_meta(path).get("kept") or {}
    if kept.get("encoder") == "checkpoint":
        record = read_json(path.parent / rf.RECORD) or {}
        checkpoint = verified_checkpoint((record.get("checkpoint") or {}).get("path"), kept.get("checkpoint_sha256"),
                                         what=f"the encoder of {path.parent.name}")
        return encoder_from_checkpoint(checkpoint.path)
    return encoder_from_checkpoint(path)


def dataset_batches(settings: dict, root, images: int, batch_size: int):
    """The first `images` evaluation images of a dataset at its eval geometry, in batches (the
    probe of transfer/similarity.py)."""
    from transfer.similarity import probe_batches, probe_images

    return probe_batches(probe_images(settings, root, images), batch_size)


def write_cka(matrix: np.ndarray, names_a: list[str], names_b: list[str], out_stem: Path, title: str,
              label_a: str, label_b: str, subject: str | None = None) -> list[Path]:
    """`<stem>.csv` (rows: layers of a) and the heatmap `<stem>.png/.svg` (`subject`: what it compares,
    for the report's caption)."""
    from bench.report.plots import plot_cka_heatmap

    out_stem.parent.mkdir(parents=True, exist_ok=True)
    csv = out_stem.with_name(out_stem.name + ".csv")
    write_text_atomic(csv, pd.DataFrame(matrix, index=names_a, columns=names_b).to_csv(float_format="%.6f"))
    return [csv, *plot_cka_heatmap(matrix, names_a, names_b, title, out_stem, xlabel=f"{label_b} layer",
                                   ylabel=f"{label_a} layer", subject=subject)]


def _cell_words(row) -> str:
    """A full cell's comparison in words: what tells apart two heatmaps of one backbone."""
    n = row["train_size"]
    return (f"{row['dataset']}, {row['protocol']} fine-tuning, {row['decoder']} decoder, init {row['init']}, "
            f"{int(n) if pd.notna(n) else 'all'} training images")


def _up_to_date(stem: Path, source: Path, subject: str) -> bool:
    """The heatmap was drawn from this source and carries this subject (titles before the subject existed
    did not name the decoder: those are redrawn)."""
    from PIL import Image

    from bench.report.plots import SUBJECT_KEY

    csv, png = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".png")
    if not (csv.is_file() and png.is_file() and csv.stat().st_mtime >= source.stat().st_mtime):
        return False
    try:
        with Image.open(png) as im:
            return im.info.get(SUBJECT_KEY) == subject
    except OSError:
        return False


def pretrained_vs_finetuned(results_dir: Path, df: pd.DataFrame, images: int | None = None,
                            batch_size: int | None = None) -> list[Path]:
    """For each backbone of a matrix with full fine-tuning, the CKA heatmap of its pre-trained
    encoder against the fine-tuned one (first seed of each comparison), written to
    `RESULTS/cka/<cell-id>.*`: from the matrix the cell stored (`cka.json`), or, for a cell run
    before cells stored one, from its kept weights (`images`/`batch_size`: the probe, by default
    the one cells use). Up-to-date heatmaps are not redrawn."""
    from transfer.similarity import PROBE_BATCH_SIZE, PROBE_IMAGES, read_cka

    paths: list[Path] = []
    full = df[(df["protocol"] == "full") & (df["status"] == rf.OK)].sort_values("seed")
    for _, group in full.groupby(["backbone", "dataset", "decoder", "init", "train_size"], sort=False):
        row = group.iloc[0]
        run_dir = Path(row["record"]).parent
        stored, final = run_dir / rf.CELL_CKA, run_dir / WEIGHT_FILES[0]
        # pandas holds a missing checkpoint (random init) as NaN, not None.
        ckpt = row["checkpoint"] if isinstance(row["checkpoint"], str) else None
        matrix = read_cka(run_dir, row["config"].get("fingerprint"))
        source = stored if matrix is not None else final
        if matrix is None and not (final.is_file() and ckpt and Path(ckpt).is_file()):
            continue  # nothing stored nor kept, or a random-init backbone: nothing pre-trained to compare
        stem = results_dir / rf.CKA / run_dir.name
        subject = f"{row['backbone']} on {_cell_words(row)}, seed {int(row['seed'])}"
        if _up_to_date(stem, source, subject):
            paths += [stem.with_name(stem.name + s) for s in (".csv", ".png", ".svg")]
            continue
        if matrix is None:
            config = row["config"]
            matrix = layer_cka(load_encoder(ckpt), load_encoder(final),
                               dataset_batches(config["dataset"], config["dataset_root"], images or PROBE_IMAGES,
                                               batch_size or PROBE_BATCH_SIZE))
        # The title names protocol, decoder and init: a backbone's monodepth2 and deeplabv3 heatmaps
        # must not look alike by title.
        paths += write_cka(*matrix, stem, f"CKA, {row['backbone']}: pre-trained vs fine-tuned\n({_cell_words(row)})",
                           "pre-trained", "fine-tuned", subject=subject)
    return paths


def cka_across_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The long frame `bench.report.plots.plot_cka_across` draws, from the `cka.json` every ok full cell stored:
    per (comparison, backbone, seed) the matrix's diagonal (pre-trained vs fine-tuned CKA of each layer,
    kind `pretrained_vs_finetuned`) and, where the document has it, the first layer against every layer
    of the pre-trained and of the fine-tuned network (`within_pretrained`, `within_finetuned`).
    Cells without a stored matrix of their fingerprint are left out (their heatmap may come from kept
    weights, but the across-backbone figure reads documents only)."""
    from transfer.similarity import as_matrix, read_cka_document

    rows = []
    full = df[(df["protocol"] == "full") & (df["status"] == rf.OK)]
    for _, cell in full.iterrows():
        doc = read_cka_document(Path(cell["record"]).parent, (cell["config"] or {}).get("fingerprint"))
        if doc is None:
            continue
        layers_a, layers_b = list(doc["layers_a"]), list(doc["layers_b"])
        if layers_a != layers_b:
            continue  # rows and columns are different layers: there is no "same layer" diagonal
        base = {k: cell[k] for k in COMPARISON} | {"backbone": cell["backbone"], "seed": cell["seed"]}
        series = {"pretrained_vs_finetuned": np.diag(as_matrix(doc["matrix"]))}
        within = doc.get("within") or {}
        for side in ("pretrained", "finetuned"):
            if within.get(side) is not None:
                series[f"within_{side}"] = as_matrix(within[side])
        for kind, values in series.items():
            rows += [{**base, "kind": kind, "layer_index": i, "layer": layer, "cka": float(v)}
                     for i, (layer, v) in enumerate(zip(layers_a, values))]
    return pd.DataFrame(rows, columns=[*COMPARISON, "backbone", "seed", "kind", "layer_index", "layer", "cka"])
