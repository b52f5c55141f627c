"""Pseudo-disparity maps from a teacher, for NimbleD-style distillation (`bench pseudo-label`).

A teacher is either a harness depth checkpoint (encoder + monodepth2 decoder with one output
channel) or a Depth Anything model folder in Hugging Face format. For every `video` item of a
pre-training source it predicts the relative disparity (larger = nearer) of the centre frame and
writes `OUT/<item id>.npy` (float32 H×W at the size training resizes items to), then
`OUT/pseudo_labels.json` last: its presence marks a finished folder.

Disparities are stored without normalisation (as NimbleD stores them): the distillation loss
aligns scale and shift per image, so the teacher's units do not matter.

Every file is written atomically. A finished folder made by the same teacher (same weight
hashes), dataset, root and size is reused as is; an interrupted run resumes, skipping the items
already written, because `.pseudo_labels.partial.json` records which teacher wrote them. Files
from another teacher are overwritten, never mixed in.

`PseudoLabelled` wraps a source so that its `video` items carry `pseudo`, which `Batches` resizes
(bilinear) and crops like the frames.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.core.version import __version__
from bench.core.atomic import write_bytes_atomic, write_text_atomic
from bench.core.checkpoint import file_sha256, load_checkpoint, load_encoder_weights
from bench.core.errors import UserError
from bench.core.models.backbones import IMAGENET_MEAN, IMAGENET_STD, create_encoder, normalize
from bench.core.models.unet_decoder import UNetDecoder
from bench.core.progress import bar as progress_bar
from pretrain.batches import _image_tensor, _resize_image
from pretrain.sources.base import PretrainSource, open_source

INFO_NAME = "pseudo_labels.json"
PARTIAL_NAME = ".pseudo_labels.partial.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
PATCH = 14  # ViT patch of Depth Anything's DINOv2 backbone: input sides must be multiples of it


# --- teachers ----------------------------------------------------------------------------------

class HarnessTeacher:
    """A harness checkpoint whose decoder is a monodepth2 U-Net with one sigmoid output channel."""

    kind = "harness"

    def __init__(self, path: Path, device: str):
        ckpt = load_checkpoint(path)
        meta, dec = ckpt.meta, ckpt.meta.get("decoder") or {}
        if dec.get("kind") != "monodepth2" or dec.get("out_channels") != 1 or not ckpt.decoder:
            raise UserError(f"--teacher {path}: a {meta.get('method', '?')} checkpoint without a monodepth2 depth "
                            f"decoder (1 output channel); use a depth checkpoint or a Depth Anything folder")
        self.output = dec.get("output")
        if self.output not in ("depth", "disparity"):
            raise UserError(f"--teacher {path}: decoder output {self.output!r} is neither 'depth' nor 'disparity'")
        if dec.get("activation", "sigmoid") != "sigmoid":
            raise UserError(f"--teacher {path}: decoder activation {dec['activation']!r} is not supported "
                            f"(expected sigmoid)")
        scales = [int(s) for s in dec.get("scales", [0])]
        if 0 not in scales:
            raise UserError(f"--teacher {path}: the decoder has no full-resolution output (scales {scales})")
        if self.output == "depth" and not dec.get("max_depth"):
            raise UserError(f"--teacher {path}: a depth decoder without max_depth in its metadata")
        self.max_depth = float(dec.get("max_depth") or 0.0)
        self.encoder = create_encoder(meta["arch"])
        load_encoder_weights(self.encoder, ckpt.encoder, source=str(path))
        self.decoder = UNetDecoder(self.encoder.channels, 1, scales=scales)
        try:
            self.decoder.load_state_dict(ckpt.decoder)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise UserError(f"--teacher {path}: decoder weights do not fit a monodepth2 decoder ({first})") from None
        self.normalization = meta["normalization"]
        self.device = device
        self.encoder.to(device).eval()
        self.decoder.to(device).eval()
        self.sha256 = file_sha256(path)
        self.info = {"arch": meta["arch"], "method": meta.get("method"), "output": self.output}

    def input_size(self, out_size: tuple[int, int]) -> tuple[int, int]:
        # The student's training size is what this network was trained at too.
        return out_size

    @torch.inference_mode()
    def disparity(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize(images.to(self.device).float() / 255.0, self.normalization)
        sig = torch.sigmoid(self.decoder(self.encoder(x), size=x.shape[-2:])[0][:, 0])
        if self.output == "disparity":
            return sig  # monodepth2's scaled disparity is affine in it: equal up to scale and shift
        return 1.0 / (self.max_depth * sig)


class DepthAnythingTeacher:
    """A Depth Anything (v1 or v2) folder: config.json with model_type depth_anything + weights."""

    kind = "depth_anything"

    def __init__(self, path: Path, device: str, short_side: int):
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"--teacher {path / 'config.json'}: unreadable ({exc})") from None
        if config.get("model_type") != "depth_anything":
            raise UserError(f"--teacher {path}: config.json has model_type {config.get('model_type')!r}; expected a "
                            f"Depth Anything folder (model_type depth_anything) or a harness checkpoint file")
        weights = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
        if not weights:
            raise UserError(f"--teacher {path}: no weight file (*.safetensors or *.bin) next to config.json")
        if short_side < PATCH:
            raise UserError(f"teacher short side {short_side}: must be at least {PATCH}")
        try:
            from transformers import AutoModelForDepthEstimation
        except ImportError:
            raise UserError("Depth Anything teachers need the `transformers` package: pip install transformers") from None
        try:
            self.model = AutoModelForDepthEstimation.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise UserError(f"--teacher {path}: cannot load the Depth Anything model ({first})") from None
        self.model.to(device).eval()
        self.device, self.short_side = device, int(short_side)
        self.normalization = _preprocessor_normalization(path)
        # The hash covers the weights and the architecture they are read into.
        digest = hashlib.sha256()
        for p in [path / "config.json", *weights]:
            digest.update(f"{p.name}|{file_sha256(p)}|".encode())
        self.sha256 = digest.hexdigest()
        self.info = {"short_side": self.short_side, "weights": [p.name for p in weights]}

    def input_size(self, out_size: tuple[int, int]) -> tuple[int, int]:
        return depth_anything_size(out_size, self.short_side)

    @torch.inference_mode()
    def disparity(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize(images.to(self.device).float() / 255.0, self.normalization)
        return self.model(pixel_values=x).predicted_depth  # relative disparity, N×h×w


def depth_anything_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """`size`'s aspect ratio with the short side at `short_side`, each side rounded to the nearest
    multiple of the patch (Depth Anything is at its best near 518)."""
    scale = short_side / min(size)
    return tuple(max(PATCH, int(round(side * scale / PATCH)) * PATCH) for side in size)


def _preprocessor_normalization(path: Path) -> dict:
    """Mean/std of the folder's image processor (ImageNet's for every released checkpoint)."""
    cfg_path = path / "preprocessor_config.json"
    try:
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise UserError(f"--teacher {cfg_path}: unreadable ({exc})") from None
    return {"mean": list(cfg.get("image_mean", IMAGENET_MEAN)), "std": list(cfg.get("image_std", IMAGENET_STD))}


def open_teacher(teacher, *, device: str = "cpu", short_side: int = 518):
    path = Path(teacher)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"--teacher {path}: a folder without config.json; give a harness checkpoint file or a "
                            f"Depth Anything folder in Hugging Face format")
        return DepthAnythingTeacher(path, device, short_side)
    if not path.is_file():
        raise UserError(f"--teacher {path}: not found")
    return HarnessTeacher(path, device)


# --- writing -----------------------------------------------------------------------------------

def label_path(folder, item_id: str) -> Path:
    return Path(folder) / f"{item_id}.npy"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32))
    write_bytes_atomic(path, buf.getvalue())


def run_pseudo_label(teacher, dataset: str, root, out, *, batch_size: int = 4, resize=None, source_options=None,
                     progress: bool = True, short_side: int = 518, device: str | None = None, log=print) -> Path:
    """Write the pseudo-labels of every `video` item of `dataset` at `root` into `out`; returns `out`.

    `resize` (H, W) is the training size the labels are written at (default: the source's default
    size, else the native size of its first item); `short_side` is the short side Depth Anything
    sees (rounded to multiples of 14); `device` defaults to CUDA when available.
    """
    out = Path(out)
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    source = open_source(dataset, root, source_options)
    if "video" not in source.kinds:
        raise UserError(f"--dataset {source.name}: has no video frames to pseudo-label (it has: "
                        f"{', '.join(source.kinds)}); depth_distill trains on video datasets")
    ids = source.items("video")
    if resize:
        size, size_from = (int(resize[0]), int(resize[1])), "resize"
    elif source.default_size:
        size, size_from = tuple(source.default_size), "source default"
    else:
        size, size_from = tuple(source.load("video", ids[0])["frames"][1].shape[:2]), "native"

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = open_teacher(teacher, device=device, short_side=short_side)
    identity = {"teacher_sha256": model.sha256, "teacher_kind": model.kind, "dataset": source.name,
                "root": str(Path(root).resolve()), "size": list(size), "teacher_options": model.info}

    info_path, partial_path = out / INFO_NAME, out / PARTIAL_NAME
    done = _read_json(info_path)
    same_teacher = isinstance(done, dict) and {k: done.get(k) for k in identity} == identity
    if same_teacher and done.get("count") == len(ids) and all(label_path(out, i).is_file() for i in ids):
        log(f"{info_path}: up to date, skipped")
        return out
    # Files already here are kept only when this very teacher and setting wrote them.
    resuming = same_teacher or _read_json(partial_path) == identity
    write_text_atomic(partial_path, json.dumps(identity, indent=2, sort_keys=True))
    info_path.unlink(missing_ok=True)  # the folder is unfinished from here on
    todo = [i for i in ids if not (resuming and label_path(out, i).is_file())]
    if resuming and len(todo) < len(ids):
        log(f"resuming: {len(ids) - len(todo)} of {len(ids)} pseudo-labels already written")

    in_size = model.input_size(size)
    bar = progress_bar(enabled=progress, total=len(ids), initial=len(ids) - len(todo), unit="img",
                       desc=f"pseudo-label {source.name}")
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        frames = [_image_tensor(source.load("video", i)["frames"][1]) for i in chunk]
        images = torch.stack([_resize_image(f, in_size) for f in frames])
        disp = model.disparity(images).float()
        if tuple(disp.shape[-2:]) != size:
            disp = F.interpolate(disp[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        for item_id, d in zip(chunk, disp.cpu().numpy()):
            _save_npy(label_path(out, item_id), d)
        bar.update(len(chunk))
    bar.close()

    info = {**identity, "teacher": str(Path(teacher).resolve()), "count": len(ids), "size_from": size_from,
            "format": "float32 HxW relative disparity (larger = nearer), unnormalised, one .npy per video item id",
            "harness_version": __version__}
    write_text_atomic(info_path, json.dumps(info, indent=2, sort_keys=True))
    partial_path.unlink(missing_ok=True)
    log(f"wrote {len(ids)} pseudo-labels ({len(todo)} new) at {size[0]}x{size[1]} to {out}")
    return out


# --- reading -----------------------------------------------------------------------------------

def read_pseudo_info(folder) -> dict:
    folder = Path(folder)
    info_path = folder / INFO_NAME
    if not folder.is_dir():
        raise UserError(f"pseudo-label folder {folder}: not found; run `bench pseudo-label --out {folder}` first")
    if not info_path.is_file():
        raise UserError(f"{info_path}: missing (unfinished pseudo-label folder); run `bench pseudo-label "
                        f"--out {folder}` to finish it")
    info = _read_json(info_path)
    if not isinstance(info, dict) or "dataset" not in info:
        raise UserError(f"{info_path}: unreadable; rerun `bench pseudo-label --out {folder}`")
    return info


class PseudoLabelled(PretrainSource):
    """A source whose `video` items also carry `pseudo` (H×W float32) from a pseudo-label folder."""

    def __init__(self, source: PretrainSource, folder):
        # The wrapped source has validated its reader options already (the wrapper, checking them
        # against its own empty list, would refuse every one).
        self.source, self.option_names = source, source.option_names
        super().__init__(source.root, source.options)
        self.folder = Path(folder)
        self.info = read_pseudo_info(self.folder)
        if self.info["dataset"] != source.name:
            raise UserError(f"{self.folder / INFO_NAME}: pseudo-labels of dataset {self.info['dataset']!r}, not "
                            f"{source.name!r}; point pseudo_labels at a folder made for this dataset")
        # Everything but `load` is the wrapped source's.
        self.name, self.kinds = source.name, source.kinds
        self.default_size, self.max_depth, self.class_names = source.default_size, source.max_depth, source.class_names
        self.self_supervised_max_depth = source.self_supervised_max_depth

    def __getattr__(self, name: str):
        # Reader-specific attributes (calibration, metadata) stay reachable through the wrapper.
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)

    def items(self, kind: str) -> list[str]:
        return self.source.items(kind)

    def load(self, kind: str, item_id: str) -> dict:
        item = self.source.load(kind, item_id)
        if kind == "video":
            item["pseudo"] = self._pseudo(item_id)
        return item

    def _pseudo(self, item_id: str) -> np.ndarray:
        path = label_path(self.folder, item_id)
        try:
            arr = np.load(path)
        except FileNotFoundError:
            raise UserError(f"{path}: no pseudo-label for item {item_id}; run `bench pseudo-label --dataset "
                            f"{self.name} --root {self.root} --out {self.folder}` to make them") from None
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: unreadable pseudo-label ({exc}); rerun `bench pseudo-label`") from None
        if arr.ndim != 2:
            raise UserError(f"{path}: expected an HxW pseudo-disparity map, got shape {arr.shape}")
        return arr.astype(np.float32, copy=False)
