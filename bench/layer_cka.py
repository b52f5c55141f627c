"""Layer-wise CKA between two encoders on a dataset's evaluation images (MeSa's analyses).

- pre-trained versus fine-tuned (`a` = a pre-training checkpoint, `b` = a transfer cell kept with
  `keep_weights`): the diagonal shows which layers fine-tuning rewrote;
- within one model (`b` omitted): every layer against every other; its first row is MeSa's
  "layer 0 versus all".
Features are taken with forward hooks at the preset's layers and reduced by global average
pooling by default (`reduce`: mean | flatten | subsample, see `bench.cka.reduce_spatial`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.core.atomic import write_text_atomic
from bench.core.checkpoint import load_checkpoint, load_encoder_weights
from bench.cka import CKAAccumulator, layer_hooks, layer_presets
from bench.core.errors import UserError
from bench.core.models.backbones import create_encoder, normalize

WEIGHT_FILES = ("final.safetensors", "checkpoint.safetensors")  # a transfer cell, a pre-training


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
    ckpt = load_checkpoint(resolve_weights(path))
    encoder = create_encoder(ckpt.meta["arch"])
    load_encoder_weights(encoder, ckpt.encoder, source=str(ckpt.path))
    encoder.normalization = ckpt.meta["normalization"]
    return encoder.eval()


@torch.no_grad()
def layer_cka(encoder_a, encoder_b, batches, layers: str | list[str] = "stages",
              reduce: str = "mean") -> tuple[np.ndarray, list[str], list[str]]:
    """CKA matrix (layers of a × layers of b) over uint8 image batches; `encoder_b=None`: a
    against itself."""
    def names(encoder):
        return layer_presets(encoder, layers) if isinstance(layers, str) else list(layers)

    def run(encoder, images):
        encoder(normalize(images.float() / 255.0, encoder.normalization))

    same = encoder_b is None
    names_a = names(encoder_a)
    names_b = names_a if same else names(encoder_b)
    # The accumulator reduces the feature maps itself (`reduce_spatial`).
    acc = CKAAccumulator(len(names_a), len(names_b), same=same, reduction=reduce)
    with contextlib.ExitStack() as stack:
        feats_a = stack.enter_context(layer_hooks(encoder_a, names_a))
        feats_b = None if same else stack.enter_context(layer_hooks(encoder_b, names_b))
        for images in batches:
            run(encoder_a, images)
            if not same:
                run(encoder_b, images)
            acc.update(list(feats_a.values()), None if same else list(feats_b.values()))
    return acc.compute(), names_a, names_b


def dataset_batches(settings: dict, root, images: int, batch_size: int):
    """The first `images` evaluation images of a dataset at its eval geometry, in batches."""
    from transfer.data import EvalImages, as_size, open_pools

    dataset, _, _, evaluation = open_pools(settings, root)
    if len(evaluation) < 4:
        raise UserError(f"dataset {dataset.name}: CKA needs at least 4 evaluation images, found {len(evaluation)}")
    subset = EvalImages(dataset, evaluation[:images], as_size(settings["eval_resize"]))
    for x, _ in subset.batches(batch_size):
        if x.shape[0] >= 4:  # the unbiased HSIC needs at least 4 rows per batch
            yield x


def write_cka(matrix: np.ndarray, names_a: list[str], names_b: list[str], out_stem: Path, title: str,
              label_a: str, label_b: str) -> list[Path]:
    """`<stem>.csv` (rows: layers of a) and the heatmap `<stem>.png/.svg`."""
    from bench.plots import plot_cka_heatmap

    out_stem.parent.mkdir(parents=True, exist_ok=True)
    csv = out_stem.with_name(out_stem.name + ".csv")
    write_text_atomic(csv, pd.DataFrame(matrix, index=names_a, columns=names_b).to_csv(float_format="%.6f"))
    return [csv, *plot_cka_heatmap(matrix, names_a, names_b, title, out_stem, xlabel=f"{label_b} layer",
                                   ylabel=f"{label_a} layer")]


def pretrained_vs_finetuned(results_dir: Path, df: pd.DataFrame, images: int = 64, batch_size: int = 16) -> list[Path]:
    """For each backbone of a matrix with full fine-tuning and kept weights, the CKA heatmap of
    its pre-trained encoder against the fine-tuned one (first seed of each comparison), written
    to `RESULTS/cka/<cell-id>.*`. Up-to-date heatmaps are not recomputed."""
    paths: list[Path] = []
    full = df[(df["protocol"] == "full") & (df["status"] == "ok")].sort_values("seed")
    for _, group in full.groupby(["backbone", "dataset", "decoder", "init", "train_size"], sort=False):
        row = group.iloc[0]
        run_dir = Path(row["record"]).parent
        # pandas holds a missing checkpoint (random init) as NaN, not None.
        final, ckpt = run_dir / WEIGHT_FILES[0], row["checkpoint"]
        if not final.is_file() or not isinstance(ckpt, str) or not Path(ckpt).is_file():
            continue  # weights not kept, or a random-init backbone: nothing pre-trained to compare
        stem = results_dir / "cka" / run_dir.name
        csv = stem.with_name(stem.name + ".csv")
        if csv.is_file() and csv.stat().st_mtime >= final.stat().st_mtime:
            paths += [stem.with_name(stem.name + s) for s in (".csv", ".png", ".svg")]
            continue
        config = row["config"]
        matrix, names_a, names_b = layer_cka(
            load_encoder(ckpt), load_encoder(final),
            dataset_batches(config["dataset"], config["dataset_root"], images, batch_size))
        paths += write_cka(matrix, names_a, names_b, stem,
                           f"CKA, {row['backbone']}: pre-trained vs fine-tuned ({row['dataset']}, "
                           f"{row['train_size']} images)", "pre-trained", "fine-tuned")
    return paths
