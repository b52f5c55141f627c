"""One transfer cell: fine-tune or probe a checkpoint on a few-shot split, evaluate, record.

`run_transfer(config, out_dir)` is what `bench transfer` and the manifest runner call; it writes
`OUT/record.json` atomically (the run record of DESIGN.md) and `OUT/log.txt`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import platform
import resource
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench.core.version import __version__
from bench.core.seeding import step_generator
from bench.core.checkpoint import load_checkpoint, save_checkpoint, state_sha256
from bench.core.metrics import ConfusionMatrix
from bench.core.progress import bar as progress_bar
from bench.core.errors import UserError
from bench.core.records import read_json, write_json_atomic
from transfer.cell_state import STATE_NAME, load_cell_state, save_cell_state
from transfer.data import dataset_settings, open_transfer_data
from transfer.distributed import all_reduce_sum, join_process_group, launched_by_torchrun, rank_and_world, spawn_cell
from transfer.feature_cache import DEFAULT_BUDGET_BYTES, DEFAULT_VIEWS_PER_IMAGE, FeatureCache
from transfer.model import build_model
from transfer.protocols import OptimizerPreset, build_optimizer, lr_factor, param_groups
from transfer.splits import write_stems

RECORD_SCHEMA = 1
FINAL_WEIGHTS = "final.safetensors"  # written when the config asks to keep weights


def pick_device(requested: str | None) -> torch.device:
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@torch.no_grad()
def evaluate(model, eval_images, num_classes: int, ignore_index: int, batch_size: int, *,
             cache: FeatureCache | None = None, device=None, autocast=None) -> dict:
    """Dataset-level confusion matrix on native-resolution labels: scores predicted at the eval
    size are upsampled (bilinear) to each label's size before the argmax."""
    model.eval()
    device = device or torch.device("cpu")
    rank, world = rank_and_world()
    cm = ConfusionMatrix(num_classes, ignore_index)
    for k, (index, images, labels) in enumerate(eval_images.indexed_batches(batch_size)):
        if k % world != rank:  # data-parallel: each rank scores its share, the matrices are summed
            continue
        with autocast or contextlib.nullcontext():
            if cache is not None:
                features = cache.features([("eval", i) for i in index],
                                          lambda keys: _to(eval_images.load([i for _, i in keys]), device))
            else:
                features = model.features(_to(images, device))
            scores = model.decoder(features, images.shape[-2:]).float()
        labels = labels.to(device)
        if scores.shape[-2:] != labels.shape[-2:]:
            scores = F.interpolate(scores, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        cm.update(scores.argmax(1).cpu(), labels.cpu())
    all_reduce_sum(cm.mat)
    model.train()
    return cm.compute()


def _to(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    # channels-last is the fast convolution layout on GPUs (tensor cores); on CPU it does not pay.
    return images.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else images


class LossStep(torch.nn.Module):
    """One step's loss as a module -- images or cached features in -- so that DDP can wrap it."""

    def __init__(self, model, ignore_index: int):
        super().__init__()
        self.model, self.ignore_index = model, ignore_index

    def forward(self, inputs, labels: torch.Tensor, cached: bool) -> torch.Tensor:
        features = inputs if cached else self.model.features(inputs)
        return self.model.decoder.loss(features, labels, self.ignore_index)


def run_transfer(config: dict, out_dir, *, progress: bool = True) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processes = int(config.get("processes") or 1)
    if processes > 1 and not launched_by_torchrun():
        spawn_cell(config, out_dir, processes, progress)  # each rank comes back through here
        record = read_json(out_dir / "record.json")
        if record is None or record.get("fingerprint") != config["fingerprint"]:
            raise RuntimeError(f"the {processes} ranks of the cell ended without writing its record")
        return record
    device = join_process_group() if launched_by_torchrun() else None
    rank, _ = rank_and_world()
    log_name = "log.txt" if rank == 0 else f"log.rank{rank}.txt"
    with open(out_dir / log_name, "a") as log_file:  # appended: a resumed cell keeps its history
        def log(msg: str) -> None:
            log_file.write(f"{_dt.datetime.now().isoformat(timespec='seconds')} {msg}\n")
            log_file.flush()

        try:
            return _train_cell(config, out_dir, progress, log, device)
        except Exception as exc:
            log(f"error: {type(exc).__name__}: {exc}")
            raise
        finally:  # a feature cache spilled to disk never outlives its cell, failed or not
            shutil.rmtree(out_dir / "feature_cache" / f"rank{rank}", ignore_errors=True)
            with contextlib.suppress(OSError):  # the last rank out removes the folder
                (out_dir / "feature_cache").rmdir()
            if device is not None:
                torch.distributed.destroy_process_group()


def _train_cell(config: dict, out_dir: Path, progress: bool, log, device=None) -> dict:
    cell = config["cell"]
    t_start = time.perf_counter()
    seed, steps = int(cell["seed"]), int(config["steps"])
    torch.manual_seed(seed)
    device = device or pick_device(config.get("device"))
    rank, world = rank_and_world()
    lead = rank == 0  # writes the record, the state and the weights
    settings = config.get("dataset") or dataset_settings(cell["dataset"])
    data, train_stems, train_images, eval_images = open_transfer_data(
        settings, config["dataset_root"], int(cell["train_size"]), seed, augment=config.get("augment", True))
    # Published with the results: the exact images this cell trained on.
    if lead:
        write_stems(out_dir / "train_split.txt", train_stems)
    checkpoint = load_checkpoint(config["checkpoint"]) if config.get("checkpoint") else None
    decoder_options = dict(config.get("decoder_options") or {})
    if config.get("decoder_spec"):
        decoder_options["spec"] = config["decoder_spec"]
    model, init_info = build_model(cell["arch"], checkpoint, cell["decoder"], config.get("init", "auto"),
                                   data.num_classes, decoder_options)
    preset = OptimizerPreset(**config["optim"])  # resolved by cell_config (bench.matrix)
    groups = param_groups(model, cell["protocol"], preset.lr, preset.encoder_lr_mult)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    if world > 1 and device.type == "cuda":
        # Statistics over the whole global batch; the converted layers keep the same parameters.
        model.decoder = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.decoder)
        if cell["protocol"] == "full":
            model.encoder = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.encoder)
    optimizer = build_optimizer(groups, preset)
    # bf16 autocast on GPUs: the speed of half precision without fp16's loss scaling.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    sha_before = state_sha256(model.encoder.state_dict())
    batch_size = int(config["batch_size"])

    cache, fixed_views = None, None
    if model.encoder_frozen and config.get("feature_cache", True):
        cache = FeatureCache(model.features, spill_dir=out_dir / "feature_cache" / f"rank{rank}",
                             budget_bytes=int(config.get("feature_cache_bytes", DEFAULT_BUDGET_BYTES)))
        if train_images.crop is not None:
            per_image = int(config.get("feature_cache_views", DEFAULT_VIEWS_PER_IMAGE))
            fixed_views = [train_images.fixed_views(i, per_image, seed) for i in range(len(train_images))]
    log(f"cell {cell} init {init_info['effective']} data {settings} optimizer {preset.model_dump()} "
        f"device {device} feature cache {'on' if cache else 'off'} "
        f"train images {len(train_stems)} eval images {len(eval_images.samples)}")

    def step_batch(gen: torch.Generator):
        if fixed_views is not None:
            pick = torch.randint(len(fixed_views), (batch_size,), generator=gen).tolist()
            which = torch.randint(len(fixed_views[0]), (batch_size,), generator=gen).tolist()
            views = [fixed_views[i][v] for i, v in zip(pick, which)]
        else:
            views = train_images.draw(gen, batch_size)
        views = views[rank::world]  # data-parallel: this rank's slice of the step's batch
        if cache is not None:
            features = cache.features(views, lambda keys: _to(train_images.load(keys)[0], device))
            return features, train_images.labels(views).to(device), True
        x, y = train_images.load(views)
        return _to(x, device), y.to(device), False

    if world > 1 and batch_size < world:
        raise UserError(f"batch size {batch_size} cannot be split over {world} processes; use at least {world}")
    step_loss = LossStep(model, data.ignore_index)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # Heads may leave parameters unused in a step (auxiliary heads, Mask2Former's layers).
        step_loss = DistributedDataParallel(step_loss, device_ids=[device.index] if device.type == "cuda" else None,
                                            find_unused_parameters=True)

    eval_every = int(config.get("eval_every", steps)) or steps
    warmup = min(preset.warmup_steps if preset.warmup_steps is not None else max(1, steps // 20), steps)
    curve, status, error, eval_s, steps_done = [], "ok", None, 0.0, 0
    state_every = int(config.get("state_every") or 0)
    resumed = load_cell_state(out_dir / STATE_NAME, config["fingerprint"], model, optimizer)
    if resumed is not None:
        steps_done, curve = resumed["step"], resumed["curve"]
        log(f"resumed from {STATE_NAME} at step {steps_done}")
    model.train()
    t_train = time.perf_counter()
    bar = progress_bar(enabled=progress, total=steps, unit="step", initial=steps_done,
                       desc=f"{cell['backbone']}/{cell['protocol']}/s{seed}")
    for step in range(steps_done, steps):
        # optimizer.param_groups, not `groups`: loading a resumed state replaces the group dicts.
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * lr_factor(step, steps, warmup, preset.poly_power)
        gen = step_generator(seed, step)
        with autocast or contextlib.nullcontext():
            inputs, y, cached = step_batch(gen)
            loss = step_loss(inputs, y, cached)
        value = float(all_reduce_sum(loss.detach().clone())) / world  # every rank agrees on divergence
        if not math.isfinite(value):
            status, error = "diverged", f"loss became {value} at step {step + 1}"
            log(error)
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps_done = step + 1
        bar.set_postfix(loss=f"{value:.3f}")
        bar.update(1)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            t_eval = time.perf_counter()
            m = evaluate(model, eval_images, data.num_classes, data.ignore_index, batch_size,
                         cache=cache, device=device, autocast=autocast)
            eval_s += time.perf_counter() - t_eval
            curve.append({"step": step + 1, "loss": value, "miou": m["miou"], "pixel_acc": m["pixel_acc"],
                          "mean_class_acc": m["mean_class_acc"], "per_class_iou": m["per_class_iou"]})
            log(f"step {step + 1} loss {value:.4f} mIoU {m['miou']:.4f} pixAcc {m['pixel_acc']:.4f}")
        if lead and state_every and (step + 1) % state_every == 0 and step + 1 < steps:
            save_cell_state(out_dir / STATE_NAME, config["fingerprint"], step + 1, model, optimizer, curve)
    bar.close()
    train_s = time.perf_counter() - t_train - eval_s

    final = curve[-1] if curve and status == "ok" else None
    best = max(curve, key=lambda r: r["miou"]) if curve else None
    named = lambda ious: dict(zip(data.class_names, ious))  # noqa: E731
    record = {
        "schema": RECORD_SCHEMA,
        "cell": cell,
        "fingerprint": config["fingerprint"],
        "status": status,
        "error": error,
        "metrics": None if final is None else {
            "miou": final["miou"], "pixel_acc": final["pixel_acc"], "mean_class_acc": final["mean_class_acc"],
            "per_class_iou": named(final["per_class_iou"]),
        },
        "best": None if best is None else {"step": best["step"], "miou": best["miou"], "pixel_acc": best["pixel_acc"]},
        "curve": [{k: v for k, v in r.items() if k != "per_class_iou"} for r in curve],
        "class_names": list(data.class_names),
        "dataset": {**settings, "num_eval_images": len(eval_images.samples)},
        "train_stems": train_stems,
        "init": init_info,
        "encoder_sha256_before": sha_before,
        "encoder_sha256_after": state_sha256(model.encoder.state_dict()),
        "checkpoint": None if checkpoint is None else {
            "path": str(checkpoint.path), "sha256": config.get("checkpoint_sha256"),
            "method": checkpoint.meta.get("method"), "steps": checkpoint.meta.get("steps"),
            # Imported checkpoints: source hashes, format and key report (`bench submit`).
            "provenance": checkpoint.meta.get("provenance"),
        },
        "optimizer": preset.model_dump(),
        "feature_cache": None if cache is None else {
            **cache.stats, "train_views": "exact" if fixed_views is None else f"{len(fixed_views[0])} per image"},
        "device": str(device),
        "processes": world,
        "timings": {
            "wall_s": time.perf_counter() - t_start, "train_s": train_s, "eval_s": eval_s,
            "steps_done": steps_done, "resumed_from_step": None if resumed is None else resumed["step"],
            "steps_per_s": (steps_done - (resumed or {}).get("step", 0)) / train_s if train_s > 0 else None,
            # Peak resident memory of the process that ran the cell (KiB on Linux).
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        },
        "versions": {"harness": __version__, "torch": torch.__version__, "python": platform.python_version(),
                     "timm": _timm_version()},
        "config": config,
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if cache is not None:
        cache.close()
    if not lead:
        return record
    if config.get("keep_weights") and status == "ok" and cell["protocol"] == "full":
        # For CKA (pre-trained vs fine-tuned), the fine-tuned encoder in the harness format. Frozen
        # and linear cells keep nothing: their encoder is bit-identical to the checkpoint's.
        save_checkpoint(out_dir / FINAL_WEIGHTS, model.encoder.state_dict(), {
            "arch": cell["arch"], "method": f"{cell['method']}+{cell['protocol']}", "data": cell["dataset"],
            "steps": steps_done, "normalization": model.encoder.normalization, "seed": seed})
    write_json_atomic(out_dir / "record.json", record)
    (out_dir / STATE_NAME).unlink(missing_ok=True)  # the record supersedes it
    log(f"status {status}; record written")
    return record


def _timm_version() -> str:
    import timm

    return timm.__version__
