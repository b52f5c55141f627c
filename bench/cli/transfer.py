"""`bench transfer`: train and evaluate one segmentation transfer cell (transfer.api)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.core import results_folder as rf
from bench.cli.common import (classes_parent, eval_resize_parent, existing_dir, key_values, out_parent,
                                  progress_parent, root_parent)
from bench.core.errors import UserError


def _epilog() -> str:
    from transfer.decoders import decoder_class, list_decoders, options_help

    lines = ["decoder options (--decoder-option KEY=VALUE):"]
    for name in list_decoders():
        lines.append(f"  {name}:")
        lines += [f"    {line}" for line in options_help(decoder_class(name))] or ["    (none)"]
    return "\n".join(lines)


def add_parser(sub) -> None:
    from transfer.datasets import list_datasets
    from transfer.protocols import PROTOCOLS

    t = sub.add_parser("transfer", help="train and evaluate one segmentation transfer cell",
                       parents=[root_parent(), classes_parent(), eval_resize_parent(), out_parent(), progress_parent()],
                       description="Fine-tunes or probes a checkpoint on a seeded few-shot split and writes "
                       "OUT/record.json.", epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--checkpoint", required=True, help="harness checkpoint (.safetensors), or 'none' for random init")
    t.add_argument("--arch", help="backbone for --checkpoint none")
    t.add_argument("--random-init", default="torchvision", choices=["torchvision", "timm"],
                   help="--checkpoint none: how the random encoder starts (default: torchvision, the paper's "
                   "baseline; timm zero-initialises every residual branch; ViTs always get timm's)")
    t.add_argument("--name", help="backbone name in the record (default: the checkpoint's folder name)")
    t.add_argument("--dataset", default="synth", choices=list_datasets(), help="segmentation dataset (default: synth)")
    t.add_argument("--train-split", help="official split to draw the few-shot subset from (default: the dataset's)")
    t.add_argument("--eval-split", help="official split to evaluate on (default: the dataset's)")
    t.add_argument("--resize", default="default", help="training resize: HxW, a short side, or native "
                   "(default: the dataset's)")
    t.add_argument("--crop", default="default", help="random training crop HxW, or none (default: the dataset's)")
    t.add_argument("--protocol", required=True, choices=list(PROTOCOLS), help="what trains (docs/protocols.md)")
    t.add_argument("--decoder", default="monodepth2", help="a decoder of `bench list decoders`, or mmseg:CONFIG.py "
                   "(the [mmseg] extra); protocol linear always uses linear (default: monodepth2)")
    t.add_argument("--decoder-option", action="append", metavar="KEY=VALUE",
                   help="a decoder option (listed below; e.g. output_stride=8 for deeplabv3); repeatable")
    t.add_argument("--init", default="auto", choices=["auto", "encoder+decoder", "encoder"],
                   help="reuse the checkpoint's decoder (auto: when it has one)")
    t.add_argument("--train-size", type=int, default=16, help="labelled training images, drawn with --seed (default: 16)")
    t.add_argument("--steps", type=int, default=300, help="optimisation steps (default: 300)")
    t.add_argument("--batch-size", type=int, default=8, help="images per step (default: 8)")
    preset = t.add_argument_group("optimiser (default: the protocol/decoder preset, docs/protocols.md)")
    preset.add_argument("--optimizer", choices=["adamw", "sgd"], help="optimiser of decoder and encoder")
    preset.add_argument("--lr", type=float, help="peak learning rate of the decoder")
    preset.add_argument("--encoder-lr-mult", type=float, help="encoder lr = lr x this (protocol full)")
    preset.add_argument("--weight-decay", type=float, help="decoupled (AdamW) or L2 (SGD) weight decay")
    preset.add_argument("--momentum", type=float, help="SGD momentum")
    preset.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default: 5%% of the steps)")
    preset.add_argument("--poly-power", type=float, help="poly decay exponent (default: 0.9)")
    sweep = t.add_argument_group("sweep: every candidate trains, the best final validation mIoU is selected "
                                 "(docs/protocols.md)")
    sweep.add_argument("--sweep-lr", metavar="LR,LR,...", help="candidate learning rates, e.g. 1e-4,3e-4,1e-3")
    sweep.add_argument("--sweep-weight-decay", metavar="WD,WD,...", help="candidate weight decays")
    t.add_argument("--no-feature-cache", action="store_true", help="frozen/linear: run the frozen encoder on "
                   "every step instead of caching its features")
    t.add_argument("--feature-cache-views", type=int, default=8, help="cached crops per image for datasets with "
                   "a random crop (default: 8)")
    t.add_argument("--no-augment", action="store_true", help="no flips, centre crop (exactly reproducible probes)")
    t.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    t.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="forward-pass precision: auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16 (+ grad scaler)")
    t.add_argument("--num-workers", type=int, default=0, help="DataLoader processes rendering training views of "
                   "cells without a feature cache (default: 0); results do not depend on it")
    t.add_argument("--processes", type=int, default=1, help="data-parallel (DDP) ranks for this cell: one per GPU, "
                   "or gloo processes on CPU (default: 1); each rank trains on a slice of every batch")
    t.add_argument("--state-every", type=int, default=100, help="save a resumable state every N steps; a re-run "
                   "with the same options resumes from it (0: never; default: 100)")
    t.add_argument("--eval-every", type=int, help="evaluate every K steps for the learning curve (default: only at the end)")
    t.add_argument("--seed", type=int, default=0, help="seed for the few-shot split, initialisation and batches")
    t.add_argument("--keep-weights", action="store_true", help="also save what rebuilds the model, in half "
                   "precision (OUT/final.safetensors, for `bench explain` and `bench cka`): full protocol the "
                   "fine-tuned encoder and decoder, frozen and linear the decoder or head (the encoder is the "
                   "checkpoint)")
    t.set_defaults(fn=main)


OPTIMIZER_FLAGS = ("optimizer", "lr", "encoder_lr_mult", "weight_decay", "momentum", "warmup_steps", "poly_power")


def settings_from_flags(args, decoder: str):
    """The flags as `transfer.api.TransferSettings`: the optimiser flags are one layer over the
    protocol's preset, exactly as a manifest's `transfer.optimizer.PROTOCOL` is."""
    from pydantic import ValidationError

    from transfer.api import TransferSettings
    from transfer.decoders import split_decoder_name

    decoder_options = key_values(args.decoder_option, "--decoder-option")
    _, file_arg = split_decoder_name(decoder)
    if file_arg is not None:  # `mmseg:CONFIG` names a file relative to the cwd
        decoder_options["spec"] = str(Path(file_arg).resolve())
    try:
        return TransferSettings(
            decoder_options={decoder: decoder_options}, init=args.init, steps=args.steps, batch_size=args.batch_size,
            eval_every=args.eval_every or args.steps,
            optimizer={args.protocol: {k: getattr(args, k) for k in OPTIMIZER_FLAGS}},
            feature_cache=not args.no_feature_cache, feature_cache_views=args.feature_cache_views,
            augment=not args.no_augment, keep_weights=args.keep_weights, state_every=args.state_every,
            precision=args.precision,
            num_workers=args.num_workers, sweep={args.protocol: grid} if (grid := _sweep_grid(args)) else {})
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = "--" + str(err["loc"][-1]).replace("_", "-")
        raise UserError(f"{flag}: {err['msg']} (got {err.get('input')!r})") from None


def _sweep_grid(args) -> dict:
    grid = {}
    for name, flag in (("lr", "--sweep-lr"), ("weight_decay", "--sweep-weight-decay")):
        text = getattr(args, f"sweep_{name}")
        if text:
            try:
                grid[name] = [float(v) for v in text.split(",") if v.strip()]
            except ValueError:
                raise UserError(f"{flag} {text!r}: expected comma-separated numbers") from None
    return grid


def main(args) -> int:
    from bench.core.checkpoint import file_sha256, read_checkpoint_meta
    from transfer.api import Cell, resolve_cell_config, run_cell
    from transfer.protocols import decoder_for

    root = existing_dir(args.root)
    if args.checkpoint == "none":
        if not args.arch:
            raise UserError("--checkpoint none (random init) needs --arch")
        arch, method, ckpt, sha = args.arch, "none", None, None
    else:
        meta = read_checkpoint_meta(args.checkpoint)
        arch, method = meta["arch"], meta["method"]
        ckpt, sha = str(Path(args.checkpoint).resolve()), file_sha256(args.checkpoint)
    decoder = decoder_for(args.protocol, args.decoder)
    cell = Cell(args.name or (Path(args.checkpoint).parent.name if ckpt else "random"), method, arch,
                args.dataset, args.protocol, decoder, args.train_size, args.seed)
    geometry = {"name": args.dataset, "classes": args.classes, "train_split": args.train_split,
                "eval_split": args.eval_split, "resize": args.resize, "crop": args.crop,
                "eval_resize": args.eval_resize}
    config = resolve_cell_config(cell, settings_from_flags(args, decoder), dataset=geometry, dataset_root=root,
                                 data_id=str(root), checkpoint=ckpt, checkpoint_sha256=sha,
                                 processes=args.processes, device=args.device, random_init=args.random_init)
    record = run_cell(config, Path(args.out), progress=args.progress)
    m = record["metrics"]
    print(f"{record['status']}: mIoU {100 * m['miou']:.2f} pixel acc {100 * m['pixel_acc']:.2f} -> "
          f"{Path(args.out) / rf.RECORD}" if m else f"{record['status']}: {record['error']}")
    return 0 if record["status"] == rf.OK else 1
