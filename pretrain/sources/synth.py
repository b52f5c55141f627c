"""The generated world (`bench data synth`) as a pre-training source.

Only the training sequences are used: the held-out ones are the segmentation evaluation set, and
no pre-training may see them. A world rendered with `pretrain_sequences` adds its pre-training-only
sequences (`pre_NNN`) to the pool. Frames give every geometric kind (depth, video with the known
intrinsics, stereo with the known baseline); the crops are the `label` kind.

Source options (`--source-option KEY=VALUE`, or a pre-training's `source_options`):
- `crops`: `in_domain` (default: crops/, views of the world's own surfaces) or `out_of_domain`
  (crops_ood/, one centred object at a fixed scale in other materials: the ImageNet analogue);
- `sequences`: pre-train on the first N sequences of the pool (training sequences, then the
  pre-training-only ones) -- the amount of pre-training data, apart from the labelled set;
- `frames`: and on the first N frames of each.
"""

from __future__ import annotations

import csv

import numpy as np

from bench.core.errors import UserError
from bench.core.synth import load_meta
from bench.core.synth.split import frame_ids, split_sequences

from .base import PretrainSource, read_rgb, register_source, require_items

CROP_FOLDERS = {"in_domain": "crops", "out_of_domain": "crops_ood"}


def _count_option(options: dict, key: str, least: int) -> int | None:
    if options.get(key) is None:
        return None
    try:
        value = int(options[key])
    except (TypeError, ValueError):
        value = None
    if value is None or value < least or str(value) != str(options[key]).strip():
        raise UserError(f"dataset synth: source option {key}={options[key]!r}: need an integer >= {least}")
    return value


@register_source
class SynthSource(PretrainSource):
    name = "synth"
    description = "the generated world (`bench data synth`): stereo video, depth, flow, crops"
    kinds = ("image", "depth", "video", "stereo", "label")
    option_names = ("crops", "sequences", "frames")

    def __init__(self, root, options):
        super().__init__(root, options)
        self.meta = load_meta(self.root)
        self.K = np.asarray(self.meta["intrinsics"], dtype=np.float64)
        self.class_names = list(self.meta["classes"])
        self.max_depth = float(self.meta["max_depth"])
        crops = options.get("crops", "in_domain")
        if crops not in CROP_FOLDERS:
            raise UserError(f"dataset synth: source option crops={crops!r}: one of {', '.join(CROP_FOLDERS)}")
        if crops == "out_of_domain" and not (self.root / "crops_ood").is_dir():
            raise UserError(f"{self.root}: no out-of-domain crops; render the world with ood_crops_per_class "
                            "(`bench data synth --ood-crops-per-class N`)")
        self.crop_dir = self.root / CROP_FOLDERS[crops]
        n_seq, n_frames = _count_option(options, "sequences", 1), _count_option(options, "frames", 3)
        # the evaluation sequences are never in the pool; pre-training-only ones come after the rest
        pool = split_sequences(self.meta)["train"] + [s["name"] for s in self.meta.get("pretrain_sequences", [])]
        self._frames = {seq: frame_ids(self.root, seq)[:n_frames] for seq in pool[:n_seq]}
        self._crops: dict[str, int] | None = None

    def items(self, kind: str) -> list[str]:
        if kind == "label":
            return require_items(list(self._crop_labels()), self.crop_dir, "object crops")
        ids = []
        for seq, frames in self._frames.items():
            # A video item needs a previous and a next frame in the same sequence.
            usable = frames[1:-1] if kind == "video" else frames
            ids += [f"{seq}/{fid}" for fid in usable]
        return require_items(ids, self.root, f"training-sequence frames usable as {kind} items")

    def _crop_labels(self) -> dict[str, int]:
        if self._crops is None:
            index = self.crop_dir / "index.csv"
            if not index.is_file():
                raise UserError(f"{index}: missing; regenerate the world with `bench data synth`")
            with open(index, newline="") as f:
                self._crops = {row["path"]: int(row["label"]) for row in csv.DictReader(f)}
        return self._crops

    def load(self, kind: str, item_id: str) -> dict:
        if kind == "label":
            return {"image": read_rgb(self.crop_dir / item_id), "label": self._crop_labels()[item_id]}
        seq, fid = item_id.split("/")
        rgb = read_rgb(self.root / seq / "rgb" / f"{fid}.png")
        if kind == "image":
            return {"image": rgb}
        if kind == "depth":
            depth = np.load(self.root / seq / "depth" / f"{fid}.npy").astype(np.float32)
            # Sky and anything at the range cap carry no measurement, like LiDAR without a return.
            depth[depth >= float(self.meta["max_depth"])] = 0.0
            return {"image": rgb, "depth": depth}
        if kind == "video":
            i = int(fid)
            width = len(fid)
            frames = [read_rgb(self.root / seq / "rgb" / f"{j:0{width}d}.png") for j in (i - 1, i + 1)]
            return {"frames": [frames[0], rgb, frames[1]], "K": self.K.copy()}
        if kind == "stereo":
            right = read_rgb(self.root / seq / "rgb_right" / f"{fid}.png")
            return {"left": rgb, "right": right, "K": self.K.copy(), "baseline": float(self.meta["baseline"])}
        raise ValueError(kind)
