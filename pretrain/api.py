"""Entry point of the pre-training stage: one resolved config in, one checkpoint out.

`run_pretrain` is what `bench pretrain` and the manifest runner call. It is idempotent: when
`OUT/checkpoint.safetensors` already holds the same config fingerprint it returns at once, and
an interrupted run resumes from its last snapshot.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.checkpoint import read_checkpoint_meta, save_checkpoint
from bench.errors import UserError
from bench.records import fingerprint
from pretrain.classification import Classification
from pretrain.depth_supervised import DepthSupervised
from pretrain.loop import train

METHODS = {cls.method: cls for cls in (DepthSupervised, Classification)}
CHECKPOINT_NAME = "checkpoint.safetensors"


def pretrain_fingerprint(config: dict) -> str:
    """Identity of the model a config produces. Cosmetic keys are left out, and so is the data
    path when `data_id` names the data (a moved results folder must not force a re-train)."""
    cosmetic = {"name", "state_every"} | ({"root"} if config.get("data_id") else set())
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


def run_pretrain(config: dict, out_dir, *, progress: bool = True, log=print) -> Path:
    out_dir = Path(out_dir)
    method = config["method"]
    if method not in METHODS:
        raise UserError(f"unknown pre-training method {method!r}; available: {', '.join(sorted(METHODS))}")
    fp = pretrain_fingerprint(config)
    if is_pretrained(out_dir, fp):
        log(f"{out_dir / CHECKPOINT_NAME}: up to date, skipped")
        return out_dir / CHECKPOINT_NAME
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(config["seed"]))  # weight initialisation
    task = METHODS[method](config)
    summary = train(task, config, fp, out_dir, progress=progress, log=log)
    meta = {
        "arch": config["arch"],
        "method": method,
        "data": {"dataset": config.get("dataset", "synth"), "root": str(config["root"])},
        "steps": int(config["steps"]),
        "normalization": task.encoder.normalization,
        "seed": int(config["seed"]),
        "fingerprint": fp,
        "config": config,
        "decoder": task.decoder_meta(),
        "summary": summary,
    }
    decoder = task.decoder.state_dict() if meta["decoder"] else None
    path = save_checkpoint(out_dir / CHECKPOINT_NAME, task.encoder.state_dict(), meta, decoder_state=decoder)
    (out_dir / "state.pt").unlink(missing_ok=True)
    log(f"wrote {path} (final loss {summary['final_loss']:.4f}, {summary['wall_s']:.1f}s)")
    return path
