"""Entry point of the pre-training stage: one resolved config in, one checkpoint out.

`run_pretrain` is what `bench pretrain` and the manifest runner call. It is idempotent: when
`OUT/checkpoint.safetensors` already holds the same config fingerprint it returns at once, and
an interrupted run resumes from its last snapshot. A run that diverges keeps its last good
weights in `OUT/last_good.safetensors` (never under the name transfer cells look for) and says
why in `OUT/diverged.json`.

The config is a flat dict: method, arch, dataset, root, steps, batch_size, lr, seed, and the
optional weight_decay, warmup_steps, state_every, max_bad_steps, grad_clip, resize, crop, init,
plus `options` (the method's own settings, see `pretrain.methods`). How it runs --
`device`, `precision`, `channels_last`, `num_workers`, `gpus` (what its job asks an executor
for) -- is recorded in `summary.json` and kept out of the fingerprint and the checkpoint;
`processes > 1` (data-parallel ranks, each normalising its own slice of a batch) and
`sync_batchnorm` change what is computed and are part of the fingerprint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.core import results_folder as rf
from bench.core.checkpoint import read_checkpoint_meta, save_checkpoint
from bench.core.devices import resolve_device, resolve_precision, use_channels_last
from bench.core.distributed import join_process_group, launched_by_torchrun, rank_and_world, spawn_ranks
from bench.core.errors import UserError
from bench.core.records import fingerprint, read_json, write_json_atomic
from bench.core.version import harness_checkout, library_versions
from pretrain.warm_start import initialise
from pretrain.loop import Diverged, train
from pretrain.methods import method_class
from pretrain.sources import open_source
from pretrain.sources.base import SOURCES

# Where and how a pre-training runs, not what it computes: out of the fingerprint and checkpoint.
RUNTIME_KEYS = ("device", "precision", "channels_last", "num_workers", "gpus")


def resolve_config(config: dict) -> dict:
    """The config with defaults made explicit, so that two spellings of one training share a
    fingerprint: None-valued keys dropped, sizes as [H, W], the method's options validated and
    completed with their defaults, and the content hashes of an `init` file and of the files
    reader options name (e.g. kitti_raw's `exclude` list) added (a different file under the same
    name is a different training)."""
    from bench.core.checkpoint import file_sha256
    from bench.core.sizes import parse_size
    from pretrain.methods import parse_options

    cls = method_class(config["method"])  # unknown method: one line before anything else
    out = {k: v for k, v in config.items() if v is not None}
    for key, default in (("processes", 1), ("sync_batchnorm", False)):  # the defaults, spelled or not
        if out.get(key) == default:
            del out[key]
    if int(out.get("processes", 1)) < 1:
        raise UserError(f"processes {out['processes']}: needs at least 1")
    if int(out.get("num_workers", 0)) < 0:
        raise UserError(f"num_workers {out['num_workers']}: needs 0 or more")
    for key in ("resize", "crop"):
        if key in out:
            size = parse_size(out[key], f"--{key}", allow_short_side=False)
            out[key] = list(size) if size else None
            if out[key] is None:
                del out[key]
    options = parse_options(cls, out.get("options") or {})
    out["options"] = options.model_dump(mode="json")
    content_ids = cls.content_ids(options)  # (may read files: once)
    if content_ids:
        out["content_ids"] = content_ids
    if out.get("source_options") == {}:
        del out["source_options"]
    source_ids = SOURCES.get(out.get("dataset", "synth")).content_ids(out.get("source_options") or {})
    if source_ids:  # (only where an option names such a file: other fingerprints stay as they were)
        out["source_content_ids"] = source_ids
    if out.get("init"):
        init = Path(out["init"])
        if not init.is_file():
            raise UserError(f"--init {init}: file not found")
        out["init_sha256"] = file_sha256(init)
    return out


def pretrain_fingerprint(config: dict) -> str:
    """Identity of the model a config produces. Cosmetic keys are left out, and so is the data
    path when `data_id` names the data (a moved results folder must not force a re-train), and
    the init path, whose content hash `init_sha256` stands for it."""
    cosmetic = {"name", "state_every", *RUNTIME_KEYS} | ({"root"} if config.get("data_id") else set()) | {"init"}
    return fingerprint({k: v for k, v in config.items() if k not in cosmetic})


def is_pretrained(out_dir, fp: str) -> bool:
    """Whether OUT holds a finished checkpoint of the config with fingerprint `fp`."""
    path = Path(out_dir) / rf.CHECKPOINT
    if not path.is_file():
        return False
    try:
        return read_checkpoint_meta(path).get("fingerprint") == fp
    except UserError:
        return False


def build_method(config: dict):
    """The method object of a config, its data opened and its networks initialised."""
    cls = method_class(config["method"])
    source = open_source(config.get("dataset", "synth"), config["root"], config.get("source_options"))
    torch.manual_seed(int(config["seed"]))  # weight initialisation
    task = cls(config, source)
    if config.get("init"):
        initialise(task, config["init"])
    return task


# Run-specific values stay out of the checkpoint (they go to summary.json), so the same config
# trained twice -- on another machine, executor or results folder -- gives the same file, and the
# cells that hash it keep their fingerprints.
VOLATILE_SUMMARY = ("harness_git", "versions", "wall_s", "images_per_s", "resumed_from", "data_wait_fraction", "device", "precision",
                    "num_workers", "peak_rss_mb", "peak_gpu_mb", "overflow_steps")


def _meta(task, config: dict, fp: str, summary: dict, steps: int) -> dict:
    located = config.get("data_id") is not None  # then data_id names the data, not the path
    return {
        "arch": config["arch"],
        "method": config["method"],
        "data": {"dataset": config.get("dataset", "synth"),
                 **({"data_id": config["data_id"]} if located else {"root": str(config["root"])})},
        "steps": steps,
        # What the encoder was trained at (HxW), whatever spelled it (resize, crop, a view size,
        # the data's native size): the pre-training resolution of a transfer record.
        "image_size": list(task.image_size),
        "normalization": task.encoder.normalization,
        # What the encoder started from: a random scheme (bench/core/models/initialisation.py) or
        # the weights of `init` (whose hash is in the config).
        "encoder_init": "weights" if config.get("init") else task.encoder.init_scheme,
        "seed": int(config["seed"]),
        "fingerprint": fp,
        "config": {k: v for k, v in config.items()
                   if not (located and k == "root") and k not in ("name", "init", *RUNTIME_KEYS)},
        "decoder": task.decoder_meta(),
        "summary": {k: v for k, v in summary.items() if k not in VOLATILE_SUMMARY},
        **task.extra_meta(),
    }


def run_pretrain(config: dict, out_dir, *, progress: bool = True, log=print) -> Path:
    out_dir = Path(out_dir)
    config = resolve_config(config)
    fp = pretrain_fingerprint(config)
    if is_pretrained(out_dir, fp):
        log(f"{out_dir / rf.CHECKPOINT}: up to date, skipped")
        return out_dir / rf.CHECKPOINT
    processes = int(config.get("processes", 1))
    wants_cuda = resolve_device(config.get("device")).type == "cuda"
    joined = False
    if processes > 1 and rank_and_world()[1] == 1:
        if not launched_by_torchrun():  # start the ranks here; each one runs this function
            return _spawn(config, out_dir, processes, progress, wants_cuda)
        join_process_group(use_cuda=wants_cuda)
        joined = True
    try:
        return _run_rank(config, fp, out_dir, progress, log)
    finally:
        if joined:
            import torch.distributed as dist

            dist.destroy_process_group()


def _spawn(config: dict, out_dir: Path, processes: int, progress: bool, use_cuda: bool) -> Path:
    try:
        spawn_ranks(run_pretrain, config, out_dir, processes, progress, use_cuda=use_cuda, what="the pre-training")
    except UserError:
        raise
    except Exception as exc:  # a rank failed; a divergence says so in diverged.json
        diverged = out_dir / rf.DIVERGENCE
        if diverged.is_file():
            info = read_json(diverged)
            raise Diverged(info["step"], 0, info["reason"], info["last_good_step"]) from None
        raise RuntimeError(f"a rank of the pre-training failed: {str(exc).strip().splitlines()[-1]}") from None
    return out_dir / rf.CHECKPOINT


def _run_rank(config: dict, fp: str, out_dir: Path, progress: bool, log) -> Path:
    """One process's training (the only one, or one data-parallel rank; rank 0 writes)."""
    rank, world = rank_and_world()
    device = resolve_device(config.get("device"))
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # the rank's own GPU
    precision = resolve_precision(config.get("precision"), device)
    task = build_method(config)
    task.batches.rank, task.batches.world = rank, world
    if world > 1 and config.get("sync_batchnorm") and device.type == "cuda":
        for name, module in task.modules.items():
            task.modules[name] = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    task.to_device(device, use_channels_last(config.get("channels_last"), device))
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / rf.DIVERGENCE).unlink(missing_ok=True)
    decoder = lambda: task.decoder.state_dict() if task.decoder_meta() else None  # noqa: E731
    try:
        summary = train(task, {**config, "precision": precision}, fp, out_dir, progress=progress and rank == 0,
                        log=log)
    except Diverged as exc:
        if rank == 0:
            info = {"status": "diverged", "reason": str(exc), "step": exc.step, "last_good_step": exc.last_good_step}
            meta = _meta(task, config, fp, info, exc.last_good_step)
            meta["status"] = "diverged"
            save_checkpoint(out_dir / rf.LAST_GOOD, _cpu(task.checkpoint_encoder().state_dict()), meta,
                            decoder_state=_cpu(decoder()))
            write_json_atomic(out_dir / rf.DIVERGENCE, info)
            log(f"diverged: {exc}; last good weights in {out_dir / rf.LAST_GOOD}")
        raise
    if rank != 0:
        return out_dir / rf.CHECKPOINT
    path = save_checkpoint(out_dir / rf.CHECKPOINT, _cpu(task.checkpoint_encoder().state_dict()),
                           _meta(task, config, fp, summary, int(config["steps"])), decoder_state=_cpu(decoder()))
    # The harness's commit and the library versions go to summary.json only: in the checkpoint they
    # would change the file's hash, and with it every cell fingerprint, at each commit or upgrade.
    summary = {**summary, "harness_git": harness_checkout(), "versions": library_versions()}
    write_json_atomic(out_dir / rf.SUMMARY, summary)
    (out_dir / rf.STATE).unlink(missing_ok=True)
    (out_dir / rf.LAST_GOOD).unlink(missing_ok=True)
    log(f"wrote {path} (final loss {summary['final_loss']:.4f}, {summary['wall_s']:.1f}s, "
        f"{summary['images_per_s']:.1f} img/s, {summary['device']} {summary['precision']}, "
        f"data wait {100 * summary['data_wait_fraction']:.0f}%)")
    return path


def _cpu(state: dict | None) -> dict | None:
    """A state dict on the CPU, contiguous (a channels-last tensor is saved as plain NCHW)."""
    if state is None:
        return None
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
