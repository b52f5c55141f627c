"""Cost of a learning-rate sweep of a frozen-encoder cell, as a ratio measured in one run.

Runs the same linear-probe cell (same checkpoint, data, seed, steps) with one candidate and with
a K-candidate `sweep` (K heads trained in one pass over the cached encoder features, each scored
on the validation split), prints the wall time of each and their ratio, and checks that the
sweep's selected candidate ends where a single cell with that learning rate ends.

    .venv/bin/python benchmarks/sweep_cost.py --checkpoint results/quickstart/pretrain/depth/checkpoint.safetensors
    .venv/bin/python benchmarks/sweep_cost.py --candidates 8 --steps 200 --protocol frozen
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _run(args, root: Path, out: Path, lrs: list[float]) -> tuple[float, dict]:
    from bench.core.checkpoint import read_checkpoint_meta
    from transfer.api import Cell, TransferSettings, resolve_cell_config, run_cell
    from transfer.protocols import decoder_for

    arch, ckpt = args.arch, None
    if args.checkpoint:
        arch, ckpt = read_checkpoint_meta(args.checkpoint)["arch"], args.checkpoint
    decoder = decoder_for(args.protocol, args.decoder)
    cell = Cell("bench", "bench", arch, args.dataset, args.protocol, decoder, args.train_size, 0)
    sweep = {args.protocol: {"lr": lrs}} if len(lrs) > 1 else {}
    settings = TransferSettings(init="encoder", steps=args.steps, batch_size=args.batch_size,
                                eval_every=args.eval_every, state_every=0, sweep=sweep,
                                optimizer={args.protocol: {"lr": lrs[0]}})
    config = resolve_cell_config(cell, settings, dataset={"name": args.dataset}, dataset_root=root,
                                 data_id=str(root), checkpoint=ckpt)
    t0 = time.perf_counter()
    record = run_cell(config, out, progress=False)
    return time.perf_counter() - t0, record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", default="linear", choices=["linear", "frozen"])
    p.add_argument("--decoder", default="monodepth2", help="decoder of a frozen cell (linear always uses linear)")
    p.add_argument("--checkpoint", help="harness checkpoint (default: a random resnet18)")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--dataset", default="synth")
    p.add_argument("--root", help="dataset folder (default: a generated 96x320 world)")
    p.add_argument("--train-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--candidates", type=int, default=8, help="learning rates, log-spaced from 1e-4 to 1e-1")
    args = p.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    lrs = [float(f"{v:.3g}") for v in np.geomspace(1e-4, 1e-1, args.candidates)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = Path(args.root) if args.root else None
        if root is None:
            from bench.core.synth import render_world

            root = render_world(tmp / "world", sequences=6, frames=12, height=96, width=320, seed=0,
                                crops_per_class=4)
        single_s, single = _run(args, root, tmp / "single", lrs[:1])
        sweep_s, sweep = _run(args, root, tmp / "sweep", lrs)
        chosen = lrs[sweep["sweep"]["selected"]]
        _, alone = _run(args, root, tmp / "alone", [chosen])
    print(f"{args.protocol} cell, {args.dataset}, {args.steps} steps, batch {args.batch_size}, validation every "
          f"{args.eval_every} on {sweep['validation']['images']} images, evaluation on "
          f"{sweep['dataset']['num_eval_images']}")
    print(f"  1 candidate (lr {lrs[0]:g}):  {single_s:7.1f} s   mIoU {100 * single['metrics']['miou']:.2f}")
    print(f"  {len(lrs)} candidates:        {sweep_s:7.1f} s   selected lr {chosen:g}, validation mIoU "
          f"{100 * sweep['validation']['miou']:.2f}, evaluation mIoU {100 * sweep['metrics']['miou']:.2f}")
    print(f"  a single cell at lr {chosen:g}: evaluation mIoU {100 * alone['metrics']['miou']:.2f} "
          f"(difference {abs(alone['metrics']['miou'] - sweep['metrics']['miou']):.1e})")
    print(f"  cost of the sweep: {sweep_s / single_s:.2f}x a single candidate")


if __name__ == "__main__":
    main()
