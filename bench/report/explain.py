"""`bench explain`: Grad-CAM overlays of cells kept with `keep_weights` (Lao et al. Fig. 6).

Each cell's model is rebuilt from its kept weights (transfer/kept.py: a full cell's fine-tuned
encoder and decoder; a frozen or linear cell's decoder or head on its checkpoint's encoder,
checked by sha256), run in evaluation mode on the first N evaluation images of its dataset at the
evaluation geometry (the same images for every cell of that dataset), and explained at one named
layer by `bench.core.gradcam`. Written under the cell folder's `explain/`:

- `<layer>_eval<index>.png`: the image with the map as a heat map over it (`jet`, half opacity);
- `<layer>.npz`: per image the map (`cam_eval<index>`, H x W in [0, 1], at the image size) and the
  predicted labels (`labels_eval<index>`), and the image `indices` and `stems`, for analyses of
  one's own.

A results folder is explained cell by cell (every cell with kept weights), each into its own
`runs/<cell-id>/explain/`, then drawn as one figure per comparison, the backbones side by side
(`plots/explain_<layer>_<comparison>.png/.svg`, bench/report/explain_grid.py).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.core import results_folder as rf
from bench.core.atomic import atomic_path, write_bytes_atomic
from bench.core.errors import UserError
from bench.core.gradcam import normalise_cams, segmentation_grad_cam
from bench.core.records import read_json

OVERLAY_ALPHA = 0.5
COLOURMAP = "jet"


def cell_folders(run: Path) -> list[Path]:
    """The cell folders RUN names: itself (a cell folder), or every cell of a results folder that
    kept its weights."""
    from transfer.kept import kept_weight_files

    run = Path(run)
    if (run / rf.RECORD).is_file():
        return [run]
    if not (run / rf.RUNS).is_dir():
        raise UserError(f"{run}: neither a cell folder ({rf.RECORD}) nor a results folder ({rf.RUNS}/)")
    cells = kept_weight_files(run)
    if not cells:
        raise UserError(f"{run}: no cell kept its weights ({rf.KEPT_WEIGHTS}); set `transfer: {{keep_weights: true}}` "
                        f"(or a list such as [frozen/monodepth2, linear]) in the manifest and re-run")
    return cells


def resolve_layer(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The encoder module `name` (e.g. act1, layer1.0.conv1), or a decoder one as `decoder.NAME`."""
    modules = {n: m for n, m in model.encoder.named_modules() if n}
    modules.update({f"decoder.{n}": m for n, m in model.decoder.named_modules() if n})
    if name in modules:
        return modules[name]
    from bench.core.cka import layer_presets

    try:
        examples = layer_presets(model.encoder, "blocks")
    except UserError:
        examples = [n for n in modules if not n.startswith("decoder.")][:8]
    raise UserError(f"unknown layer {name!r}; encoder layers include {', '.join(examples[:10])} (any module name of "
                    f"the encoder, or decoder.NAME for the decoder's)")


def first_eval_images(record: dict, images: int, root=None):
    """The first `images` evaluation images of the cell's dataset at its evaluation geometry."""
    from transfer.data import EvalImages, as_size, open_pools

    config = record.get("config") or {}
    settings = config.get("dataset") or record.get("dataset")
    root = Path(root) if root else Path(config.get("dataset_root", ""))
    if not root.is_dir():
        raise UserError(f"the dataset of {record['cell']['dataset']} is not at {root} any more; pass --root")
    dataset, _, _, evaluation = open_pools(settings, root)
    return EvalImages(dataset, evaluation[:images], as_size(settings["eval_resize"]))


def layer_file_part(layer: str) -> str:
    """The layer as it appears in the cell's file names (explain/<part>_eval<index>.png, <part>.npz)."""
    return layer.replace("/", "_")


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """H x W x 3 uint8: the image with the [0, 1] map over it as a `jet` heat map."""
    from matplotlib import colormaps

    heat = colormaps[COLOURMAP](np.clip(cam, 0.0, 1.0))[..., :3] * 255.0
    return np.round((1 - alpha) * image.astype(np.float64) + alpha * heat).clip(0, 255).astype(np.uint8)


def explain_cell(run_dir: Path, images: int, layer: str, *, root=None, device: str = "cpu",
                 batch_size: int = 8) -> list[Path]:
    """Grad-CAM overlays of one cell's first `images` evaluation images at `layer`; the files written."""
    from transfer.kept import rebuild_cell_model

    run_dir = Path(run_dir)
    record = read_json(run_dir / rf.RECORD)
    if record is None:
        raise UserError(f"{run_dir}: no readable {rf.RECORD}")
    model = rebuild_cell_model(record, run_dir).to(device)
    target = resolve_layer(model, layer)
    model.requires_grad_(False)  # only the layer's output is differentiated (bench.core.gradcam)
    eval_images = first_eval_images(record, images, root)
    out = run_dir / rf.EXPLAIN
    cams, labels, indices, written = [], [], [], []
    for index, x, _ in eval_images.indexed_batches(batch_size):
        cam, predicted, _ = segmentation_grad_cam(model, target, x.to(device))
        cams += list(normalise_cams(cam, x.shape[-2:]).cpu().numpy())
        labels += list(predicted.cpu().numpy().astype(np.uint8))
        indices += index
    safe = layer_file_part(layer)
    arrays = {"indices": np.array(indices), "stems": np.array([eval_images.samples[i].stem for i in indices])}
    for i, cam, predicted in zip(indices, cams, labels):
        buffer = io.BytesIO()
        Image.fromarray(overlay(eval_images.items[i][0], cam)).save(buffer, format="PNG")
        written.append(write_bytes_atomic(out / f"{safe}_eval{i:05d}.png", buffer.getvalue()))
        arrays[f"cam_eval{i:05d}"], arrays[f"labels_eval{i:05d}"] = cam.astype(np.float32), predicted
    npz = out / f"{safe}.npz"
    with atomic_path(npz) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return [*written, npz]
