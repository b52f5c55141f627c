"""Overhead of the harness's training loops over bare PyTorch loops, as ratios measured in one run.

(a) transfer: a `full`-protocol cell (encoder + monodepth2 decoder) run through the harness
    (`transfer.api.resolve_cell_config` + `run_cell`, validation only once, at the last step)
    against a bare loop: the same model (`transfer.model.build_model`, the same random init), the
    cell's training images already in memory as tensors, the same batch size and flips, AdamW with
    the cell's two parameter groups, learning rate and weight decay, the same number of steps and
    nothing else. The harness's training time is its record's `timings.train_s`, which leaves its
    validation (`eval_s`) out; data opening, model building and the final evaluation are outside
    both clocks.
(b) pre-training: `pretrain.api.run_pretrain` (method depth_supervised, optionally classification)
    against a bare loop with the same encoder and decoder (or head), batch, flips, AdamW, loss and
    the training items already resized in memory. The harness's time is its summary's `wall_s`
    (the loop: NaN checks, buffer snapshots for skipped steps, the gradient norm, the history).

Both sides run the same shapes after one untimed warm-up of each (allocator, kernel selection),
interleaved `--repeats` times. Two figures per loop:
- totals: overhead = harness training time / bare time - 1, best run of each side;
- per step: the median time between consecutive optimiser steps (a global
  `torch.optim` step hook, the same on both sides, so the whole iteration -- data, forward,
  backward, update, bookkeeping -- and never an evaluation), over all runs of each side. On a
  shared machine single runs vary by several per cent; the median step is the robust figure.
The target: an overhead of at most 5 % on a CPU.

    .venv/bin/python benchmarks/harness_overhead.py                     # resnet18, generated 96x320 world
    .venv/bin/python benchmarks/harness_overhead.py --steps 40 --batch-size 4 --size 128x416 --threads 2
    .venv/bin/python benchmarks/harness_overhead.py --methods depth_supervised,classification --repeats 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cpu_share import CpuShare  # benchmarks/ is the script's folder, first on sys.path

TARGET = 0.05


class StepClock:
    """Times of every optimiser step taken inside the block (any optimiser, harness or bare)."""

    def __enter__(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.times: list[float] = []
        self._handle = register_optimizer_step_post_hook(lambda *_: self.times.append(time.perf_counter()))
        return self

    def __exit__(self, *exc):
        self._handle.remove()

    @property
    def intervals(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:])]


def _median(values: list[float]) -> float:
    import statistics

    return statistics.median(values)


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w)


# --- (a) transfer ----------------------------------------------------------------------------------


def _cell_config(args, root: Path, steps: int) -> dict:
    from transfer.api import Cell, TransferSettings, resolve_cell_config

    cell = Cell("bench", "bench", args.arch, "synth", "full", "monodepth2", args.train_size, 0)
    settings = TransferSettings(init="encoder", steps=steps, batch_size=args.batch_size, eval_every=steps,
                                state_every=0)
    return resolve_cell_config(cell, settings, dataset={"name": "synth"}, dataset_root=root, data_id=str(root))


def harness_transfer(args, root: Path, out: Path, steps: int) -> dict:
    """The cell's record (its `timings`: train_s without validation, eval_s, wall_s)."""
    from transfer.api import run_cell

    return run_cell(_cell_config(args, root, steps), out, progress=False)


def bare_transfer(args, root: Path, steps: int) -> float:
    """Seconds of `steps` bare training steps of the cell's model on its in-memory training images."""
    import torch
    import torch.nn.functional as F

    from transfer.data import View, open_transfer_data
    from transfer.model import build_model
    from transfer.protocols import OptimizerPreset

    config = _cell_config(args, root, steps)
    cell = config["cell"]
    dataset, _, train, _, _ = open_transfer_data(config["dataset"], root, int(cell["train_size"]), int(cell["seed"]))
    images, labels = train.load([View(i, -1, -1, False) for i in range(len(train))])  # N×3×H×W uint8, N×H×W
    torch.manual_seed(int(cell["seed"]))
    model, _ = build_model(cell["arch"], None, cell["decoder"], "encoder", dataset.num_classes, None,
                           config.get("random_init", "timm"))
    preset = OptimizerPreset(**config["optim"])
    optimizer = torch.optim.AdamW([
        {"params": model.decoder.parameters(), "lr": preset.lr},
        {"params": model.encoder.parameters(), "lr": preset.lr * preset.encoder_lr_mult},
    ], weight_decay=preset.weight_decay)
    ignore, batch = dataset.ignore_index, int(config["batch_size"])
    gen = torch.Generator().manual_seed(0)
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(len(images), (batch,), generator=gen)
        flip = torch.rand(batch, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], images[idx].flip(-1), images[idx])
        y = torch.where(flip[:, None, None], labels[idx].flip(-1), labels[idx])
        loss = F.cross_entropy(model(x), y, ignore_index=ignore)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    float(loss.detach())
    return time.perf_counter() - t0


# --- (b) pre-training --------------------------------------------------------------------------------


def _pretrain_config(args, root: Path, method: str, steps: int) -> dict:
    # As tests/conftest.py's tiny_depth_ckpt spells one; no snapshot inside the run.
    return {"name": f"bench-{method}", "method": method, "arch": args.arch, "root": str(root), "data_id": "bench",
            "steps": steps, "batch_size": args.batch_size, "lr": 1e-3, "seed": 0, "state_every": 10**9}


def harness_pretrain(args, root: Path, out: Path, method: str, steps: int) -> dict:
    """The run's summary.json (wall_s: the loop; images_per_s)."""
    from pretrain.api import run_pretrain

    run_pretrain(_pretrain_config(args, root, method, steps), out, progress=False, log=lambda msg: None)
    return json.loads((out / "summary.json").read_text())


def bare_pretrain(args, root: Path, method: str, steps: int) -> float:
    """Seconds of `steps` bare steps of the method's networks and loss on its items in memory."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from bench.core.models.backbones import create_encoder, normalize
    from bench.core.models.unet_decoder import UNetDecoder
    from pretrain.batches import Batches
    from pretrain.losses import scale_invariant_log_loss
    from pretrain.sources import open_source

    source = open_source("synth", root, None)
    kind = {"depth_supervised": "depth", "classification": "label"}[method]
    items = Batches(source, kind, method)
    loaded = [items._item(i) for i in range(len(items))]  # resized once, as the harness caches them
    images = torch.stack([it["image"] for it in loaded])
    torch.manual_seed(0)
    encoder = create_encoder(args.arch)
    if method == "depth_supervised":
        depth = torch.stack([it["depth"] for it in loaded])
        max_depth = float(source.max_depth)
        head_net = UNetDecoder(encoder.channels, out_channels=1, scales=(0,))
        nn.init.normal_(head_net.head_conv(0).weight, 0.0, 0.5)
        nn.init.zeros_(head_net.head_conv(0).bias)
    else:
        targets = torch.tensor([it["label"] for it in loaded], dtype=torch.int64)
        head_net = nn.Linear(encoder.channels[-1], len(source.class_names))
    params = [p for m in (encoder, head_net) for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    batch = args.batch_size
    gen = torch.Generator().manual_seed(0)
    encoder.train()
    head_net.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(len(images), (batch,), generator=gen)
        flip = torch.rand(batch, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], images[idx].flip(-1), images[idx])
        x = normalize(x.float() / 255.0, encoder.normalization)
        if method == "depth_supervised":
            d = torch.where(flip[:, None, None], depth[idx].flip(-1), depth[idx])
            valid = (d > 0) & (d <= max_depth)
            pred = max_depth * torch.sigmoid(head_net(encoder(x), size=x.shape[-2:])[0][:, 0])
            loss = scale_invariant_log_loss(pred, d, valid)
        else:
            loss = F.cross_entropy(head_net(encoder(x)[-1].mean(dim=(2, 3))), targets[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    float(loss.detach())
    return time.perf_counter() - t0


# --- the run -----------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--steps", type=int, default=20, help="timed training steps of every run")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--size", type=_size, default=(96, 320), help="HxW of the generated world (the training size)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--train-size", type=int, default=16, help="few-shot training images of the transfer cell")
    p.add_argument("--methods", default="depth_supervised",
                   help="comma-separated pre-training methods: depth_supervised, classification")
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs of each side")
    p.add_argument("--skip-transfer", action="store_true")
    p.add_argument("--skip-pretrain", action="store_true")
    args = p.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in ("depth_supervised", "classification"):
            p.error(f"--methods: {m!r} has no bare loop here (depth_supervised, classification)")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = args.size
    rows = []  # (what, harness s per run, bare s per run, samples per step, step intervals x2, others' CPU)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from bench.core.synth import render_world

        t0 = time.perf_counter()
        root = render_world(tmp / "world", sequences=6, frames=12, height=h, width=w, seed=0, crops_per_class=4)
        print(f"generated world {h}x{w} (6 sequences x 12 frames) in {time.perf_counter() - t0:.1f} s; "
              f"{args.arch}, batch {args.batch_size}, {args.steps} steps, {torch.get_num_threads()} threads, "
              f"{args.repeats} runs per side")

        def measure(what: str, per_step: int, harness_run, bare_run, describe) -> None:
            """`--repeats` interleaved runs of each side: a row of the table."""
            harness, bare, h_steps, b_steps, others = [], [], [], [], []
            for r in range(args.repeats):
                with CpuShare() as share_h, StepClock() as clock:
                    harness_s, info = harness_run(r)
                harness.append(harness_s)
                h_steps += clock.intervals
                with CpuShare() as share_b, StepClock() as clock:
                    bare.append(bare_run())
                b_steps += clock.intervals
                shares = [x.others for x in (share_h, share_b) if x.others is not None]
                others += shares
                busy = f"; other processes {100 * max(shares):.0f}% of the CPUs" if shares else ""
                print(f"  {what} run {r + 1}: harness {harness_s:.2f} s ({describe(info)}), bare {bare[-1]:.2f} s"
                      f"{busy}")
            rows.append((what, harness, bare, per_step, h_steps, b_steps, max(others, default=None)))

        if not args.skip_transfer:
            harness_transfer(args, root, tmp / "warm-cell", 2)  # untimed warm-up of both sides
            bare_transfer(args, root, 2)

            def cell_run(r):
                record = harness_transfer(args, root, tmp / f"cell{r}", args.steps)
                return record["timings"]["train_s"], record["timings"]

            measure("transfer full/monodepth2", 1, cell_run, lambda: bare_transfer(args, root, args.steps),
                    lambda t: f"record train_s; validation {t['eval_s']:.2f} s apart, cell wall {t['wall_s']:.2f} s")

        if not args.skip_pretrain:
            for method in methods:
                harness_pretrain(args, root, tmp / f"warm-{method}", method, 2)
                bare_pretrain(args, root, method, 2)

                def pretrain_run(r, method=method):
                    summary = harness_pretrain(args, root, tmp / f"pre-{method}{r}", method, args.steps)
                    return summary["wall_s"], summary

                def describe(summary):
                    wait = summary.get("data_wait_fraction")
                    return (f"summary wall_s, {summary['images_per_s']:.2f} images/s"
                            f"{f', data wait {100 * wait:.1f}%' if wait is not None else ''}")

                measure(f"pretrain {method}", args.batch_size, pretrain_run,
                        lambda method=method: bare_pretrain(args, root, method, args.steps), describe)

    print()
    print(f"{args.arch}, batch {args.batch_size}, {h}x{w}, {args.steps} steps x {args.repeats} runs per side, "
          f"{torch.get_num_threads()} threads; target: overhead <= {100 * TARGET:.0f} %")
    if "classification" in methods and not args.skip_pretrain:
        print("(classification trains on the world's 64x64 object crops, not on its frames)")
    print(f"{'loop':28s} {'harness':>15s} {'bare':>15s} {'overhead':>9s} | {'median step':>11s} {'bare':>9s} "
          f"{'overhead':>9s}")
    spreads = []
    for what, harness_runs, bare_runs, per_step, h_steps, b_steps, _ in rows:
        harness_s, bare_s = min(harness_runs), min(bare_runs)
        spreads.append(f"{what} {100 * (max(bare_runs) / bare_s - 1):.0f}% (bare), "
                       f"{100 * (max(harness_runs) / harness_s - 1):.0f}% (harness)")
        unit = "steps/s" if per_step == 1 else "img/s"
        hr, br = args.steps * per_step / harness_s, args.steps * per_step / bare_s
        overhead = harness_s / bare_s - 1
        hm, bm = _median(h_steps), _median(b_steps)
        step_overhead = hm / bm - 1
        verdict = "met" if step_overhead <= TARGET else "NOT met"
        print(f"{what:28s} {hr:7.3f} {unit:7s} {br:7.3f} {unit:7s} {100 * overhead:+8.1f}% | {1e3 * hm:8.0f} ms "
              f"{1e3 * bm:6.0f} ms {100 * step_overhead:+8.1f}%  {verdict}")
    print("(totals: harness training time (transfer: record train_s; pretrain: summary wall_s) / bare time - 1, "
          "best run of each side;\n per step: median interval between optimiser steps over all runs, the verdict's "
          "figure; a negative overhead is noise)")
    if args.repeats > 1:
        print(f"run-to-run spread of the totals, slowest over fastest run: {'; '.join(spreads)}")
    worst = max((r[-1] for r in rows if r[-1] is not None), default=None)
    if worst is not None and worst > 0.05:
        print(f"warning: other processes took up to {100 * worst:.0f}% of the CPUs during a run; on a busy machine "
              f"the figures are distorted (multi-threaded steps suffer most): rerun when it is idle")


if __name__ == "__main__":
    main()
