"""A full cell's pre-trained versus fine-tuned CKA matrix, computed at the end of the cell.

The report's CKA heatmaps (MeSa's "which layers did fine-tuning rewrite") compare a cell's
pre-trained encoder with its fine-tuned one. Computing that matrix while the fine-tuned weights
are still in memory, and storing the small matrix as `OUT/cka.json` next to the record, means a
cell no longer has to keep a 45 MB copy of its encoder for `bench aggregate` to load later
(`keep_weights` still saves one for other analyses).

The probe is what `bench aggregate` used when it loaded kept weights, so a stored matrix equals
the one computed from the saved encoder: the first `PROBE_IMAGES` evaluation images of the
cell's dataset at its evaluation geometry, in batches of `PROBE_BATCH_SIZE` (a batch under 4
images is dropped: the unbiased HSIC needs 4 rows), the "stages" layers, global average pooling.
A cell takes them from its own evaluation images, already prepared (nothing is decoded twice).

`cka.json` holds `schema`, `kind`, the cell's `fingerprint` (a matrix of another version of the
cell is not taken for this one), `layers_a` / `layers_b` (rows: pre-trained; columns:
fine-tuned), `matrix` (null where a layer was constant over the probe), `within` (the first
layer against every layer of the pre-trained and of the fine-tuned network, MeSa's "layer 0
versus all"; absent from documents written before it), and `probe` (dataset,
evaluation size, images, batch size, layers, reduction, the image stems, the pre-trained
checkpoint's sha256, the fine-tuned encoder's sha256 and the device it ran on).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bench.core import results_folder as rf
from bench.core.cka import encoder_from_checkpoint, layer_cka_with_within
from bench.core.errors import UserError
from bench.core.records import read_json, write_json_atomic
from transfer.data import EvalImages, as_size, open_pools

CKA_SCHEMA = 1
PROBE_IMAGES = 64
PROBE_BATCH_SIZE = 16
PROBE_LAYERS = "stages"
PROBE_REDUCE = "mean"


def probe_images(settings: dict, root, images: int) -> EvalImages:
    """The first `images` evaluation images of a dataset at its evaluation geometry."""
    dataset, _, _, evaluation = open_pools(settings, root)
    if len(evaluation) < 4:
        raise UserError(f"dataset {dataset.name}: CKA needs at least 4 evaluation images, found {len(evaluation)}")
    return EvalImages(dataset, evaluation[:images], as_size(settings["eval_resize"]))


def probe_batches(eval_images: EvalImages, batch_size: int, images: int | None = None):
    """uint8 image batches of the first `images` (default: all) of `eval_images`, batched as
    `EvalImages` batches them; a batch under 4 images is left out (unbiased HSIC). Cut from the
    whole evaluation set, the batches are those of its first `images` alone, so a cell probes
    its own (already prepared) evaluation images exactly as `probe_images` would."""
    limit = len(eval_images.samples) if images is None else images
    for index, x, _ in eval_images.indexed_batches(batch_size):
        if index[0] >= limit:
            return
        x = x[: sum(1 for i in index if i < limit)]  # indices ascend: the kept ones are a prefix
        if x.shape[0] >= 4:
            yield x


def pretrained_vs_finetuned(config: dict, fine_tuned, eval_images: EvalImages, *, encoder_sha256: str,
                            images: int = PROBE_IMAGES, batch_size: int = PROBE_BATCH_SIZE) -> dict:
    """The `cka.json` document of a full cell: its checkpoint's encoder (rows) against
    `fine_tuned` (columns, the in-memory encoder, put in eval mode here) on the first `images` of
    the cell's evaluation images, on the device the fine-tuned encoder is on."""
    if len(eval_images.samples) < 4:
        raise UserError(f"CKA needs at least 4 evaluation images, found {len(eval_images.samples)}")
    device = next(fine_tuned.parameters()).device
    pre_trained = encoder_from_checkpoint(config["checkpoint"], device=device)
    fine_tuned.eval()
    settings = config["dataset"]
    matrix, names_a, names_b, (within_a, within_b) = layer_cka_with_within(
        pre_trained, fine_tuned, probe_batches(eval_images, batch_size, images), PROBE_LAYERS, reduce=PROBE_REDUCE)
    probed = eval_images.samples[:images]
    return {
        "schema": CKA_SCHEMA, "kind": "pretrained_vs_finetuned", "fingerprint": config["fingerprint"],
        "layers_a": names_a, "layers_b": names_b,
        "matrix": _json_rows(matrix),
        # MeSa's within-network analysis: the first probed layer against every layer, of each network
        # (only that row: the document stays a few kB).
        "within": {"layer": names_a[0], "pretrained": _json_rows(within_a[:1])[0],
                   "finetuned": _json_rows(within_b[:1])[0]},
        "probe": {"dataset": settings["name"], "eval_resize": settings["eval_resize"], "images": len(probed),
                  "batch_size": int(batch_size), "layers": PROBE_LAYERS, "reduce": PROBE_REDUCE,
                  "stems": [s.stem for s in probed], "checkpoint_sha256": config.get("checkpoint_sha256"),
                  "encoder_sha256": encoder_sha256, "device": str(device)},
    }


def _json_rows(matrix: np.ndarray) -> list[list[float | None]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in np.asarray(matrix).tolist()]


def write_cka(out_dir: Path, document: dict) -> Path:
    return write_json_atomic(Path(out_dir) / rf.CELL_CKA, document)


def read_cka_document(run_dir: Path, fingerprint: str | None) -> dict | None:
    """The stored `cka.json` of a cell folder, or None when there is none for this fingerprint."""
    document = read_json(Path(run_dir) / rf.CELL_CKA)
    if not document or document.get("schema") != CKA_SCHEMA or document.get("fingerprint") != fingerprint:
        return None
    return document


def as_matrix(rows) -> np.ndarray:
    """A stored matrix (or row) back as float64, NaN where a layer was constant over the probe."""
    return np.array([np.nan if v is None else v for v in rows] if rows and not isinstance(rows[0], list)
                    else [[np.nan if v is None else v for v in row] for row in rows], dtype=np.float64)


def read_cka(run_dir: Path, fingerprint: str | None) -> tuple[np.ndarray, list[str], list[str]] | None:
    """The stored matrix of a cell folder, or None when there is none for this fingerprint."""
    document = read_cka_document(run_dir, fingerprint)
    if document is None:
        return None
    matrix = np.array([[np.nan if v is None else v for v in row] for row in document["matrix"]], dtype=np.float64)
    return matrix, list(document["layers_a"]), list(document["layers_b"])
