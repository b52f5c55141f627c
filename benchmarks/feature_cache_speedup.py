"""Speed-up of the frozen-feature cache, measured as a ratio in one run.

Runs the same transfer cell (same checkpoint, data, seed, steps) twice -- the frozen encoder on
every step (`feature_cache: false`) and on each view once (`feature_cache: true`) -- and prints
the wall time of each, the ratio, and both mIoUs, which agree: on a dataset without a random
crop the cached cell trains on exactly the uncached cell's batches.

    .venv/bin/python benchmarks/feature_cache_speedup.py                  # generated world, resnet18
    .venv/bin/python benchmarks/feature_cache_speedup.py --protocol frozen --checkpoint CKPT \\
        --dataset kitti --root /data/kitti --steps 300
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _run(args, root: Path, out: Path, cached: bool) -> tuple[float, dict]:
    from bench.core.checkpoint import read_checkpoint_meta
    from transfer.api import Cell, TransferSettings, resolve_cell_config, run_cell
    from transfer.protocols import decoder_for

    arch, ckpt = args.arch, None
    if args.checkpoint:
        arch, ckpt = read_checkpoint_meta(args.checkpoint)["arch"], args.checkpoint
    decoder = decoder_for(args.protocol, args.decoder)
    cell = Cell("bench", "bench", arch, args.dataset, args.protocol, decoder, args.train_size, 0)
    settings = TransferSettings(init="encoder", steps=args.steps, batch_size=args.batch_size,
                                eval_every=args.eval_every, feature_cache=cached, state_every=0)
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
    args = p.parse_args()

    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = Path(args.root) if args.root else None
        if root is None:
            from bench.core.synth import render_world

            root = render_world(tmp / "world", sequences=6, frames=12, height=96, width=320, seed=0,
                                crops_per_class=4)
        plain_s, plain = _run(args, root, tmp / "plain", cached=False)
        cached_s, cached = _run(args, root, tmp / "cached", cached=True)
    stats = cached["feature_cache"]
    print(f"{args.protocol} cell, {args.dataset}, {args.steps} steps, batch {args.batch_size}, "
          f"eval every {args.eval_every} on {plain['dataset']['num_eval_images']} images")
    print(f"  uncached: {plain_s:7.1f} s   mIoU {100 * plain['metrics']['miou']:.2f}")
    print(f"  cached:   {cached_s:7.1f} s   mIoU {100 * cached['metrics']['miou']:.2f}   "
          f"({stats['computed']} views encoded, {stats['hits']} cache hits, "
          f"{stats['bytes_in_memory'] / 2**20:.0f} MiB in memory, {stats['bytes_on_disk'] / 2**20:.0f} MiB on disk)")
    print(f"  speed-up: {plain_s / cached_s:.2f}x")


if __name__ == "__main__":
    main()
