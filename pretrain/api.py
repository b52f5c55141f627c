"""Entry point of the pre-training stage: one resolved config in, one checkpoint out.

`run_pretrain` is what `bench pretrain` and the manifest runner call. It is idempotent: when
`OUT/checkpoint.safetensors` already holds the same config fingerprint it returns at once, and
an interrupted run resumes from its last snapshot. A run that diverges keeps its last good
weights in `OUT/last_good.safetensors` (never under the name transfer cells look for) and says
why in `OUT/diverged.json`.

The config is a flat dict: method, arch, dataset, root, steps, batch_size, lr, seed, and the
optional weight_decay, warmup_steps, state_every, max_bad_steps, grad_clip, resize, crop, init,
plus `options` (the method's own settings, see `pretrain.methods`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.core.checkpoint import read_checkpoint_meta, save_checkpoint
from bench.core.errors import UserError
from bench.core.records import fingerprint, write_json_atomic
from pretrain.warm_start import initialise
from pretrain.loop import Diverged, train
from pretrain.methods import method_class
from pretrain.sources import open_source
from pretrain.sources.base import SOURCES

CHECKPOINT_NAME = "checkpoint.safetensors"
LAST_GOOD_NAME = "last_good.safetensors"


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
    cosmetic = {"name", "state_every"} | ({"root"} if config.get("data_id") else set()) | {"init"}
    return fingerprint({k: v for k, v in config.items() if k not in cosmetic})


def is_pretrained(out_dir, fp: str) -> bool:
    """Whether OUT holds a finished checkpoint of the config with fingerprint `fp`."""
    path = Path(out_dir) / CHECKPOINT_NAME
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
VOLATILE_SUMMARY = ("wall_s", "images_per_s", "resumed_from")


def _meta(task, config: dict, fp: str, summary: dict, steps: int) -> dict:
    located = config.get("data_id") is not None  # then data_id names the data, not the path
    return {
        "arch": config["arch"],
        "method": config["method"],
        "data": {"dataset": config.get("dataset", "synth"),
                 **({"data_id": config["data_id"]} if located else {"root": str(config["root"])})},
        "steps": steps,
        "normalization": task.encoder.normalization,
        # What the encoder started from: a random scheme (bench/core/models/initialisation.py) or
        # the weights of `init` (whose hash is in the config).
        "encoder_init": "weights" if config.get("init") else task.encoder.init_scheme,
        "seed": int(config["seed"]),
        "fingerprint": fp,
        "config": {k: v for k, v in config.items() if not (located and k == "root") and k not in ("name", "init")},
        "decoder": task.decoder_meta(),
        "summary": {k: v for k, v in summary.items() if k not in VOLATILE_SUMMARY},
        **task.extra_meta(),
    }


def run_pretrain(config: dict, out_dir, *, progress: bool = True, log=print) -> Path:
    out_dir = Path(out_dir)
    config = resolve_config(config)
    fp = pretrain_fingerprint(config)
    if is_pretrained(out_dir, fp):
        log(f"{out_dir / CHECKPOINT_NAME}: up to date, skipped")
        return out_dir / CHECKPOINT_NAME
    task = build_method(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "diverged.json").unlink(missing_ok=True)
    decoder = lambda: task.decoder.state_dict() if task.decoder_meta() else None  # noqa: E731
    try:
        summary = train(task, config, fp, out_dir, progress=progress, log=log)
    except Diverged as exc:
        info = {"status": "diverged", "reason": str(exc), "step": exc.step, "last_good_step": exc.last_good_step}
        meta = _meta(task, config, fp, info, exc.last_good_step)
        meta["status"] = "diverged"
        save_checkpoint(out_dir / LAST_GOOD_NAME, task.encoder.state_dict(), meta, decoder_state=decoder())
        write_json_atomic(out_dir / "diverged.json", info)
        log(f"diverged: {exc}; last good weights in {out_dir / LAST_GOOD_NAME}")
        raise
    path = save_checkpoint(out_dir / CHECKPOINT_NAME, task.encoder.state_dict(),
                           _meta(task, config, fp, summary, int(config["steps"])), decoder_state=decoder())
    write_json_atomic(out_dir / "summary.json", summary)
    (out_dir / "state.pt").unlink(missing_ok=True)
    (out_dir / LAST_GOOD_NAME).unlink(missing_ok=True)
    log(f"wrote {path} (final loss {summary['final_loss']:.4f}, {summary['wall_s']:.1f}s, "
        f"{summary['images_per_s']:.1f} img/s)")
    return path

