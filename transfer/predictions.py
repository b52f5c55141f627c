"""A cell's predictions on a few fixed evaluation images, saved for the qualitative grids.

At the end of its final evaluation every cell predicts `SAVED_IMAGES` evaluation images, evenly
spaced over the evaluation set (`saved_indices`: they depend on the set's size only, so every cell
of a dataset saves the same images), exactly as the evaluation scores them (scores at the
evaluation size, upsampled bilinearly to the label's native size, argmax). It writes, under
`OUT/predictions/`:

- `eval<index>_pred.png`: the prediction, a palette PNG (mode P: the stored index is the class,
  the palette the dataset's, `ignore_colour` at 255);
- `eval<index>_label.png`: the ground truth, the same way (255: not scored);
- `eval<index>_image.jpg`: the input image;
- `predictions.json`: the cell's fingerprint, the dataset, its class names, palette, ignore index
  and colour, and per image its index, stem, files, native and saved size.

Images whose label is larger than `PREVIEW_MAX_SIDE` pixels on its long side are saved at that
size (labels by nearest neighbour, the image bilinearly), so that a cell's few images stay small
whatever the dataset: the grid is drawn from the results folder alone (bench/report/qualitative.py). Not
part of the fingerprint: a runtime output, like the log.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bench.core import results_folder as rf
from bench.core.atomic import write_bytes_atomic
from bench.core.records import write_json_atomic

PREDICTIONS_SCHEMA = 1
SAVED_IMAGES = 4
PREVIEW_MAX_SIDE = 512
JPEG_QUALITY = 90
# The colour of unscored pixels: the first of these that is not a class colour of the dataset.
IGNORE_COLOURS = ((0, 0, 0), (255, 255, 255), (224, 224, 192), (128, 128, 128))


def saved_indices(num_eval: int, count: int = SAVED_IMAGES) -> list[int]:
    """`count` evaluation-set indices evenly spaced from the first image to the last."""
    k = min(count, num_eval)
    if k <= 1:
        return [0] if num_eval else []
    return sorted({round(j * (num_eval - 1) / (k - 1)) for j in range(k)})


def preview_size(height: int, width: int, max_side: int = PREVIEW_MAX_SIDE) -> tuple[int, int]:
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def ignore_colour(palette) -> tuple[int, int, int]:
    used = {tuple(int(v) for v in c) for c in palette}
    return next((c for c in IGNORE_COLOURS if c not in used), IGNORE_COLOURS[0])


def palette_table(palette, ignore_index: int, ignore_rgb) -> np.ndarray:
    """256 x 3 uint8: each class index's colour, `ignore_index`'s `ignore_rgb` (the rest black);
    a palette PNG's palette, and the lookup that colours its stored indices back."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    table[ignore_index] = ignore_rgb
    return table


def palette_png(label: np.ndarray, palette, ignore_index: int) -> bytes:
    """A label map (class indices, `ignore_index` unscored) as a palette PNG."""
    if len(palette) > 255:
        raise ValueError(f"a palette PNG holds at most 255 classes besides the ignore index, not {len(palette)}")
    table = palette_table(palette, ignore_index, ignore_colour(palette))
    image = Image.fromarray(np.asarray(label, dtype=np.uint8), mode="P")
    image.putpalette(table.reshape(-1).tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@torch.no_grad()
def predict_images(model, eval_images, indices: list[int], *, cache=None, device=None, autocast=None,
                   split: str = "eval") -> list[np.ndarray]:
    """The label maps (native label size, uint8) the evaluation predicts for these images: the
    features from the cell's feature cache where it has one (what the evaluation used)."""
    device = device or torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        preds = []
        for i in indices:
            images = eval_images.load([i])
            with autocast or contextlib.nullcontext():
                if cache is not None:
                    features = cache.features([(split, i)], lambda keys: eval_images.load([k for _, k in keys]).to(device))
                else:
                    features = model.features(images.to(device))
                scores = model.decoder(features, images.shape[-2:]).float()
            label_size = eval_images.items[i][1].shape
            if scores.shape[-2:] != label_size:
                scores = F.interpolate(scores, size=label_size, mode="bilinear", align_corners=False)
            preds.append(scores.max(1).indices[0].cpu().numpy().astype(np.uint8))
        return preds
    finally:
        model.train(was_training)


def save_predictions(out_dir, config: dict, model, eval_images, *, cache=None, device=None, autocast=None) -> Path:
    """Predict the saved images of the cell `config` describes and write `OUT/predictions/`."""
    dataset = eval_images.dataset
    indices = saved_indices(len(eval_images.samples))
    preds = predict_images(model, eval_images, indices, cache=cache, device=device, autocast=autocast)
    folder = Path(out_dir) / rf.PREDICTIONS
    palette = [list(map(int, c)) for c in dataset.palette]
    entries = []
    for i, pred in zip(indices, preds):
        image, label = eval_images.items[i]
        size = preview_size(*label.shape)
        names = {part: f"eval{i:05d}_{part}.{'jpg' if part == 'image' else 'png'}" for part in ("image", "label", "pred")}
        buffer = io.BytesIO()
        Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR).save(buffer, format="JPEG",
                                                                                quality=JPEG_QUALITY)
        write_bytes_atomic(folder / names["image"], buffer.getvalue())
        for part, labels in (("label", label), ("pred", pred)):
            small = np.asarray(Image.fromarray(labels).resize((size[1], size[0]), Image.NEAREST))
            write_bytes_atomic(folder / names[part], palette_png(small, palette, dataset.ignore_index))
        entries.append({"index": i, "stem": eval_images.samples[i].stem, "native_size": list(label.shape),
                        "size": list(size), "image": names["image"], "label": names["label"],
                        "prediction": names["pred"]})
    return write_json_atomic(folder / rf.PREDICTIONS_INDEX, {
        "schema": PREDICTIONS_SCHEMA, "fingerprint": config["fingerprint"], "dataset": config["cell"]["dataset"],
        "num_eval_images": len(eval_images.samples), "class_names": list(dataset.class_names), "palette": palette,
        "ignore_index": int(dataset.ignore_index), "ignore_colour": list(ignore_colour(palette)), "images": entries})
