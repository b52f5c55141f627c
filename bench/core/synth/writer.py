"""Render a whole world to disk (atomically) and read it back.

A world is built in a hidden sibling directory and renamed into place only when complete, so an
interrupted run never leaves something that looks like a finished world; meta.json is written
last inside it for the same reason.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import shutil
import tempfile
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from bench.core.atomic import current_umask
from bench.core.errors import UserError

from .classes import BASELINE, CLASSES, IGNORE_INDEX, MAX_DEPTH, PALETTE
from .controls import Controls, material_banks, style_rng
from .crops import crop_scenes, render_crop
from .object_crops import BACKGROUNDS, object_crops
from .render import color_map, depth_map, flow_map, intrinsics, label_map, trace
from .scene import GROUND_Y, ROAD_HALF, generate_scene

FORMAT, VERSION = "depth2seg-synth", 1
_MAX_ATTEMPTS = 20  # scene re-draws per sequence until every class is visible
PRETRAIN_INDEX = 1_000_000  # seed index of the first pre-training-only sequence


def right_pose(pose: np.ndarray, baseline: float = BASELINE) -> np.ndarray:
    """Right stereo camera: same orientation, shifted +baseline along the camera x axis."""
    out = pose.copy()
    out[:3, 3] += baseline * pose[:3, 0]
    return out


def _render_sequence(seed: int, index: int, frames: int, height: int, width: int, K, antialias: bool,
                     controls: Controls | None = None):
    """Frames of one sequence. The scene is re-drawn (deterministically) until every class is
    visible somewhere in it; that check needs only the traces, so shading happens once."""
    controls = controls or Controls()
    banks = material_banks(seed, controls.materials_per_class) if controls.restyles else None
    for attempt in range(_MAX_ATTEMPTS):
        scene = generate_scene(np.random.default_rng([seed, index, attempt]), frames, controls,
                               (banks, style_rng(seed, index, attempt)))
        traces = [trace(scene, k, scene.poses[k], K, height, width) for k in range(frames)]
        labels = [label_map(tr) for tr in traces]
        if set(np.unique(np.stack(labels)).tolist()) >= set(range(len(CLASSES))):
            break
    # (after _MAX_ATTEMPTS misses the last draw is kept; not seen for any tried size or seed)
    views = []
    for k, (tr, label) in enumerate(zip(traces, labels)):
        v = {"label": label, "depth": depth_map(tr), "rgb": color_map(tr, antialias)}
        if k + 1 < frames:
            v["flow"] = flow_map(tr, scene.poses[k + 1])
        right = trace(scene, k, right_pose(scene.poses[k]), K, height, width)
        v["rgb_right"] = color_map(right, antialias)
        views.append(v)
    return scene, views


def _write_sequence(seq_dir: Path, scene, views) -> None:
    for sub in ("rgb", "rgb_right", "depth", "flow", "label"):
        (seq_dir / sub).mkdir(parents=True)
    for k, v in enumerate(views):
        name = f"{k:06d}"
        Image.fromarray(v["rgb"]).save(seq_dir / "rgb" / f"{name}.png")
        Image.fromarray(v["rgb_right"]).save(seq_dir / "rgb_right" / f"{name}.png")
        Image.fromarray(v["label"]).save(seq_dir / "label" / f"{name}.png")
        np.save(seq_dir / "depth" / f"{name}.npy", v["depth"])
        if "flow" in v:
            np.save(seq_dir / "flow" / f"{name}.npy", v["flow"])
    # The primitive table, for consumers/tests that need exact geometry or instances.
    (seq_dir / "scene.json").write_text(json.dumps({"tex_seed": scene.tex_seed, **scene.prims.to_json()}))


def _class_crops(seed: int, cls: int, per_class: int, size: int, controls: Controls | None = None) -> list[np.ndarray]:
    """All crops of one class (a self-contained unit of work, so it can run in a worker)."""
    scenes = crop_scenes(seed, max(1, min(8, per_class // 10 + 1)), controls)
    rng = np.random.default_rng([seed, 0xC409, 1000 + cls])
    return [render_crop(scenes[i % len(scenes)], cls, size, rng) for i in range(per_class)]


def _write_crops(crop_dir: Path, crops: list[list[np.ndarray]]) -> None:
    rows = []
    for c, (name, images) in enumerate(zip(CLASSES, crops)):
        (crop_dir / name).mkdir(parents=True)
        for i, rgb in enumerate(images):
            Image.fromarray(rgb).save(crop_dir / name / f"{i:06d}.png")
            rows.append((f"{name}/{i:06d}.png", c, name))
    with open(crop_dir / "index.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(("path", "label", "class_name"))
        w.writerows(rows)


class _Serial:
    """Stand-in for a process pool that runs each job when its result is asked for (so one
    sequence at a time is held in memory)."""

    def submit(self, fn, *args):
        return _Deferred(fn, args)

    def shutdown(self, cancel_futures=False):
        pass


class _Deferred:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def result(self):
        return self.fn(*self.args)


def render_world(out_dir, sequences: int = 4, frames: int = 10, height: int = 64, width: int = 192,
                 seed: int = 0, crops_per_class: int = 40, crop_size: int = 64, antialias: bool = True,
                 overwrite: bool = False, workers: int = 1, *, materials_per_class: int = 1,
                 shared_materials: float = 0.0, instance_jitter: float = 0.0, illumination: float = 0.0,
                 shadows: bool = False, object_scale: str = "default", pretrain_sequences: int = 0,
                 pretrain_frames: int | None = None, ood_crops_per_class: int = 0,
                 ood_background: str = "clutter") -> Path:
    """Render the world to `out_dir` and return it. Same arguments ⇒ byte-identical files.

    antialias: extra colour sub-samples on object silhouettes; depth, labels and flow are always
    exact pixel-centre values.
    workers: > 1 renders sequences and crop classes in that many spawned processes (each unit is
    seeded on its own, so the files are identical for any number of workers).
    The keyword-only arguments are the world's controls (docs/datasets.md); at their defaults the
    world is the one rendered before they existed, file for file. pretrain_sequences extra
    sequences (`pre_NNN`, pretrain_frames frames each, default: frames) are for pre-training only:
    transfer never sees them and the evaluation split is unchanged. ood_crops_per_class > 0 adds
    the out-of-domain, object-centric crops under crops_ood/ (object_crops.py).
    """
    out_dir = Path(out_dir)
    if sequences < 1 or frames < 1 or height < 8 or width < 8 or crops_per_class < 0 or crop_size < 8:
        raise ValueError("need sequences, frames >= 1; height, width, crop_size >= 8; crops_per_class >= 0")
    if pretrain_sequences < 0 or (pretrain_frames is not None and pretrain_frames < 1) or ood_crops_per_class < 0:
        raise ValueError("need pretrain_sequences, ood_crops_per_class >= 0 and pretrain_frames >= 1")
    if ood_background not in BACKGROUNDS:
        raise ValueError(f"ood_background must be one of {', '.join(BACKGROUNDS)}")
    controls = Controls(materials_per_class=materials_per_class, shared_materials=shared_materials,
                        instance_jitter=instance_jitter, illumination=illumination, shadows=shadows,
                        object_scale=object_scale)
    world_controls = {**controls.changed(),
                      **{k: v for k, v, default in (("pretrain_sequences", pretrain_sequences, 0),
                                                    ("pretrain_frames", pretrain_frames, None),
                                                    ("ood_crops_per_class", ood_crops_per_class, 0),
                                                    ("ood_background", ood_background, "clutter"))
                         if v != default}}
    ctl = controls if controls.changed() else None  # None: the code path of today, untouched
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass overwrite=True to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        # mkdtemp makes it 0700; a published world should be readable like any folder mkdir makes
        tmp.chmod(0o777 & ~current_umask())
        K = intrinsics(height, width)
        pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
                if workers > 1 else _Serial())
        try:
            seq_jobs = [pool.submit(_render_sequence, seed, s, frames, height, width, K, antialias, ctl)
                        for s in range(sequences)]
            # pre-training-only sequences: their own seed indices, so adding them moves no other
            pre_jobs = [pool.submit(_render_sequence, seed, PRETRAIN_INDEX + s, pretrain_frames or frames, height,
                                    width, K, antialias, ctl) for s in range(pretrain_sequences)]
            crop_jobs = [pool.submit(_class_crops, seed, c, crops_per_class, crop_size, ctl)
                         for c in range(len(CLASSES))]
            ood_jobs = [pool.submit(object_crops, seed, c, ood_crops_per_class, crop_size, ood_background)
                        for c in range(len(CLASSES))] if ood_crops_per_class else []
            seq_meta, pre_meta = [], []
            for prefix, jobs, listing in (("seq", seq_jobs, seq_meta), ("pre", pre_jobs, pre_meta)):
                for s, job in enumerate(jobs):
                    name = f"{prefix}_{s:03d}"
                    scene, views = job.result()
                    _write_sequence(tmp / name, scene, views)
                    listing.append({"name": name, "poses": scene.poses.round(12).tolist()})
            _write_crops(tmp / "crops", [job.result() for job in crop_jobs])
            if ood_jobs:
                _write_crops(tmp / "crops_ood", [job.result() for job in ood_jobs])
        finally:
            pool.shutdown(cancel_futures=True)  # on failure: drop queued jobs, don't run them
        meta = {"format": FORMAT, "version": VERSION, "seed": seed, "height": height, "width": width,
                "num_sequences": sequences, "num_frames": frames, "classes": list(CLASSES),
                "palette": [list(c) for c in PALETTE], "ignore_index": IGNORE_INDEX, "max_depth": MAX_DEPTH,
                "intrinsics": K.tolist(), "baseline": BASELINE, "camera_height": GROUND_Y,
                "road_half_width": ROAD_HALF, "crop_size": crop_size, "sequences": seq_meta}
        if world_controls:  # only when set, so a default world's meta.json is today's, byte for byte
            meta["controls"] = world_controls
        if pre_meta:
            meta["pretrain_sequences"] = pre_meta
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        _publish(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _publish(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        tmp.rename(out_dir)
        return
    if not overwrite:
        raise FileExistsError(f"{out_dir} appeared while rendering")
    old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
    out_dir.rename(old)  # swap, then delete: out_dir is never missing a complete world for long
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def load_meta(root) -> dict:
    path = Path(root) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{root}: no generated world here (missing meta.json); "
                        f"create one with `bench data synth --out {root}`") from None
    except ValueError as exc:
        raise UserError(f"{path}: corrupt world metadata ({exc}); regenerate with `bench data synth`") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path}: not a {FORMAT} world")
    return meta


def read_frame(root, seq_name: str, idx: int) -> dict:
    """One frame: rgb, rgb_right (uint8 H×W×3), depth (float32 H×W), flow (H×W×2 or None for
    the last frame), label (uint8 H×W)."""
    d = Path(root) / seq_name
    name = f"{int(idx):06d}"
    flow_path = d / "flow" / f"{name}.npy"
    return {
        "rgb": np.asarray(Image.open(d / "rgb" / f"{name}.png").convert("RGB")),
        "rgb_right": np.asarray(Image.open(d / "rgb_right" / f"{name}.png").convert("RGB")),
        "depth": np.load(d / "depth" / f"{name}.npy"),
        "flow": np.load(flow_path) if flow_path.exists() else None,
        "label": np.asarray(Image.open(d / "label" / f"{name}.png")),
    }


def read_scene(root, seq_name: str) -> dict:
    """The sequence's primitive table (numpy arrays), as written to scene.json."""
    raw = json.loads((Path(root) / seq_name / "scene.json").read_text())
    return {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in raw.items()}
