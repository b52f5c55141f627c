"""`bench pretrain`: pre-train one encoder and write its checkpoint (pretrain.api)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.core import results_folder as rf
from bench.cli.common import existing_dir, key_values, out_parent, progress_parent, root_parent


def _epilog() -> str:
    from pretrain.methods import list_methods, method_class, options_help
    from pretrain.sources import list_sources

    lines = ["method options (-o KEY=VALUE):"]
    for name in list_methods():
        lines.append(f"  {name}:")
        lines += [f"    {line}" for line in options_help(method_class(name))] or ["    (none)"]
    lines.append(f"datasets: {', '.join(list_sources())} (reader options: docs/pretraining.md)")
    return "\n".join(lines)


def add_parser(sub) -> None:
    from pretrain.methods import list_methods
    from pretrain.sources import list_sources

    pt = sub.add_parser("pretrain", help="pre-train one encoder and write a checkpoint",
                        parents=[root_parent(), out_parent(), progress_parent()], description=
                        "Writes OUT/checkpoint.safetensors and OUT/history.csv; an interrupted run resumes "
                        "from OUT/state.pt, and a finished one with the same config is skipped. A run whose "
                        "loss or gradient stays non-finite for --max-bad-steps steps stops (exit 3) and keeps "
                        "its last good weights in OUT/last_good.safetensors.",
                        epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    pt.add_argument("--method", required=True, choices=list_methods(), help="pre-training method")
    pt.add_argument("--arch", required=True, help="registered backbone name, e.g. resnet18 (`bench list archs`)")
    pt.add_argument("--dataset", default="synth", choices=list_sources(), help="pre-training data (default: synth)")
    pt.add_argument("--steps", type=int, required=True, help="optimisation steps")
    pt.add_argument("--batch-size", type=int, default=8, help="images per step (default: 8)")
    pt.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (default: 1e-3)")
    pt.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default: 1e-4)")
    pt.add_argument("--warmup-steps", type=int, help="linear warm-up steps before the cosine decay (default: 5%% of --steps)")
    pt.add_argument("--seed", type=int, default=0, help="seed for initialisation, batches and augmentation")
    pt.add_argument("--init", help="start from these weights: a harness checkpoint, or a torchvision/timm "
                    "state dict of the same arch (e.g. ImageNet weights); default: from scratch")
    pt.add_argument("--resize", help="training size HxW every item is resized to (default: the dataset's)")
    pt.add_argument("--crop", help="train on random HxW crops of the resized items (e.g. 256x256: 'Depth-cropped')")
    pt.add_argument("--state-every", type=int, default=100, help="snapshot for resume every N steps (default: 100)")
    pt.add_argument("--max-bad-steps", type=int, default=20, help="stop as diverged after this many consecutive "
                    "non-finite steps (default: 20)")
    pt.add_argument("--grad-clip", type=float, help="clip the gradient norm to this value (default: no clipping)")
    pt.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N; every "
                    "network of the method (pose net, intrinsics head, key encoder) moves there")
    pt.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                    help="forward-pass precision: auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 (autocast), fp16 "
                    "(autocast + gradient scaler; CUDA only)")
    pt.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                    help="channels-last memory layout for the networks (default: on with CUDA)")
    pt.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes decoding and resizing "
                    "items ahead of the step (default: 0, in the training process); results do not depend on it")
    pt.add_argument("--processes", type=int, default=1, help="data-parallel ranks (one per GPU with NCCL, or gloo "
                    "processes on CPU); each trains on a slice of every batch (default: 1)")
    pt.add_argument("--sync-batchnorm", action="store_true", help="with --processes > 1 on GPUs: BatchNorm "
                    "statistics over the whole batch (SyncBatchNorm)")
    pt.add_argument("-o", "--option", action="append", metavar="KEY=VALUE", help="a method option (listed below); repeatable")
    pt.add_argument("--source-option", action="append", metavar="KEY=VALUE", help="a dataset reader option "
                    "(docs/pretraining.md); repeatable")
    pt.set_defaults(fn=main)


def main(args) -> int:
    from bench.core.models.backbones import backbone_spec
    from pretrain.api import run_pretrain
    from pretrain.loop import Diverged

    root = existing_dir(args.root)
    backbone_spec(args.arch)  # unknown arch: one line before any work
    config = {
        "name": Path(args.out).name, "method": args.method, "arch": args.arch, "dataset": args.dataset,
        "root": str(root), "data_id": str(root), "steps": args.steps, "batch_size": args.batch_size,
        "lr": args.lr, "weight_decay": args.weight_decay, "warmup_steps": args.warmup_steps, "seed": args.seed,
        "state_every": args.state_every, "max_bad_steps": args.max_bad_steps, "grad_clip": args.grad_clip,
        "resize": args.resize, "crop": args.crop, "device": args.device, "precision": args.precision,
        "channels_last": args.channels_last, "num_workers": args.num_workers, "processes": args.processes,
        "sync_batchnorm": args.sync_batchnorm or None,
        "init": str(Path(args.init).resolve()) if args.init else None,
        "options": key_values(args.option, "--option"),
        "source_options": key_values(args.source_option, "--source-option"),
    }
    try:
        print(run_pretrain(config, Path(args.out), progress=args.progress))
    except Diverged as exc:
        print(f"error: diverged: {exc}; the last good weights are in {Path(args.out) / rf.LAST_GOOD}",
              file=sys.stderr)
        return 3
    return 0
