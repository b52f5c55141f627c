"""Images/s of a KITTI-size loading pipeline against a ResNet-18 training step, measured in one run.

Writes `--images` generated 375x1242 RGB PNGs (smooth gradients, flat and textured shapes and
sensor-like noise, so that they compress about as camera frames do; the mean file size is
printed) to a temporary folder, then times

  1. the loading pipeline, per image: PNG decode (PIL, `pretrain.sources.base.read_rgb`, as the
     harness's sources read frames), `pretrain.batches._image_tensor`, the resize to 192x640
     (`pretrain.batches._resize_image`: bilinear, antialiased), a horizontal flip with p 0.5 and
     monodepth2's colour jitter (`pretrain.methods.depth_video.monodepth2_color_jitter`, p 0.5);
     first stage by stage in this process (one thread), then through a
     `torch.utils.data.DataLoader` (batch 8, pin_memory off, prefetch_factor 2, persistent
     workers) with 0, 1 and 2 workers, after one untimed epoch that starts the workers;
  2. a ResNet-18 training step at 192x640 (encoder + the monodepth2 depth decoder, forward,
     backward, AdamW) on this CPU,

and prints images/s of each, their ratio, and the loader workers that a GPU training at
`--gpu-images-per-s` (default 1,500, an H100-class rate) would need at this machine's rate per
worker (one core per worker at this CPU's speed).

    .venv/bin/python benchmarks/loader_throughput.py
    .venv/bin/python benchmarks/loader_throughput.py --images 96 --epochs 3 --workers 0,1,2,4 --train-steps 5
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

from cpu_share import CpuShare  # benchmarks/ is the script's folder, first on sys.path

KITTI_HW = (375, 1242)
TRAIN_HW = (192, 640)


def write_pngs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` KITTI-size frames: a vertical sky-to-road gradient with a horizontal tint, a few
    dozen flat or striped shapes, a soft blur of the shapes' edges and Gaussian noise (sigma 3)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    h, w = KITTI_HW
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for k in range(count):
        top, bottom = rng.uniform(60, 230, 3), rng.uniform(20, 140, 3)
        t = (yy / (h - 1))[..., None]
        base = top * (1 - t) + bottom * t + 25 * np.sin(xx / rng.uniform(80, 300) + rng.uniform(0, 6))[..., None]
        im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(25, 45))):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            x1, y1 = x0 + int(rng.integers(10, 260)), y0 + int(rng.integers(10, 160))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape = rng.integers(0, 3)
            if shape == 0:
                draw.rectangle([x0, y0, x1, y1], fill=colour)
            elif shape == 1:
                draw.ellipse([x0, y0, x1, y1], fill=colour)
            else:  # a striped facade
                for x in range(x0, x1, int(rng.integers(4, 14))):
                    draw.line([x, y0, x, y1], fill=colour, width=2)
        im = im.filter(ImageFilter.GaussianBlur(0.8))
        arr = np.asarray(im).astype(np.float32) + rng.normal(0, 3.0, (h, w, 3)).astype(np.float32)
        path = folder / f"{k:010d}.png"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


class FramePipeline:
    """Decode, resize and augment one frame: a float 3×192×640 tensor in [0, 1]. The flip and the
    jitter are drawn from a generator seeded by the item's index (workers draw independently)."""

    def __init__(self, paths: list[Path], size: tuple[int, int] = TRAIN_HW):
        self.paths, self.size = list(paths), tuple(size)

    def __len__(self) -> int:
        return len(self.paths)

    # The stages, also timed one by one.
    @staticmethod
    def decode(path: Path):
        from pretrain.batches import _image_tensor
        from pretrain.sources.base import read_rgb

        return _image_tensor(read_rgb(path))

    def resize(self, img):
        from pretrain.batches import _resize_image

        return _resize_image(img, self.size)

    @staticmethod
    def augment(img, index: int):
        import torch

        from pretrain.methods.depth_video import as_float, monodepth2_color_jitter

        gen = torch.Generator().manual_seed(index)
        if float(torch.rand((), generator=gen)) < 0.5:
            img = img.flip(-1)
        return monodepth2_color_jitter(gen, as_float(img)[None, None])[0, 0]

    def __getitem__(self, index: int):
        return self.augment(self.resize(self.decode(self.paths[index])), index)


def stage_times(pipe: FramePipeline) -> dict[str, float]:
    """Seconds per image of each stage, in this process, after one untimed pass over two images
    (first-call costs: libraries' lazy set-up, kernel selection)."""
    for i in range(min(2, len(pipe))):
        pipe[i]
    out = {"decode": 0.0, "resize": 0.0, "augment": 0.0}
    for i, path in enumerate(pipe.paths):
        t0 = time.perf_counter()
        img = pipe.decode(path)
        t1 = time.perf_counter()
        img = pipe.resize(img)
        t2 = time.perf_counter()
        pipe.augment(img, i)
        t3 = time.perf_counter()
        out["decode"] += t1 - t0
        out["resize"] += t2 - t1
        out["augment"] += t3 - t2
    return {k: v / len(pipe) for k, v in out.items()}


def loader_images_per_s(pipe: FramePipeline, workers: int, batch_size: int, epochs: int) -> float:
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(pipe, batch_size=batch_size, shuffle=True, num_workers=workers, pin_memory=False,
                        persistent_workers=workers > 0, prefetch_factor=2 if workers > 0 else None,
                        generator=torch.Generator().manual_seed(0))
    for _ in loader:  # untimed: starts the workers
        pass
    seen = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            seen += batch.shape[0]
    elapsed = time.perf_counter() - t0
    del loader  # ends persistent workers before the next measurement
    return seen / elapsed


def train_images_per_s(arch: str, batch_size: int, steps: int, size: tuple[int, int]) -> float:
    """Images/s of encoder + depth-decoder training steps (forward, backward, AdamW)."""
    import torch

    from bench.core.models.backbones import create_encoder
    from bench.core.models.unet_decoder import UNetDecoder

    torch.manual_seed(0)
    encoder = create_encoder(arch)
    decoder = UNetDecoder(encoder.channels, out_channels=1, scales=(0,))
    params = list(encoder.parameters()) + list(decoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
    x = torch.rand(batch_size, 3, *size)
    target = torch.rand(batch_size, 1, *size)

    def step():
        pred = torch.sigmoid(decoder(encoder(x), size=size)[0])
        loss = (pred - target).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocator and kernel selection
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch_size * steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=48, help="generated 375x1242 PNGs")
    p.add_argument("--epochs", type=int, default=2, help="timed passes over them per loader")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader num_workers to time")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--train-steps", type=int, default=3, help="timed training steps (after one warm-up)")
    p.add_argument("--train-batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch threads of the training step and of "
                   "num_workers=0 (default: torch's); workers always use one")
    p.add_argument("--gpu-images-per-s", type=float, default=1500.0, help="the GPU training rate to feed")
    args = p.parse_args()
    workers = [int(v) for v in args.workers.split(",") if v != ""]

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = write_pngs(Path(tmp), args.images)
        mean_kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        raw_kb = KITTI_HW[0] * KITTI_HW[1] * 3 / 1024
        print(f"{len(paths)} PNGs of {KITTI_HW[0]}x{KITTI_HW[1]} RGB written in {time.perf_counter() - t0:.1f} s: "
              f"mean {mean_kb:.0f} KiB ({mean_kb / raw_kb:.2f} of the {raw_kb:.0f} KiB raw size); "
              f"{os.cpu_count()} CPUs")
        pipe = FramePipeline(paths)
        torch.set_num_threads(1)  # one core, as one worker has
        stages = stage_times(pipe)
        torch.set_num_threads(threads)
        per_image = sum(stages.values())
        print(f"pipeline stages, one thread, per image: decode {1e3 * stages['decode']:.1f} ms, resize to "
              f"{TRAIN_HW[0]}x{TRAIN_HW[1]} {1e3 * stages['resize']:.1f} ms, flip + colour jitter "
              f"{1e3 * stages['augment']:.1f} ms; total {1e3 * per_image:.1f} ms = {1 / per_image:.1f} images/s")
        loader, others = {}, []
        for n in workers:
            with CpuShare() as share:
                loader[n] = loader_images_per_s(pipe, n, args.batch_size, args.epochs)
            others.append(share.others)
            note = f"main process, {threads} threads" if n == 0 else f"{n} worker{'s' * (n > 1)}, 1 thread each"
            print(f"DataLoader num_workers={n} ({note}): {loader[n]:.1f} images/s{_busy(share.others)}")

    with CpuShare() as share:
        train = train_images_per_s(args.arch, args.train_batch_size, args.train_steps, TRAIN_HW)
    others.append(share.others)
    print(f"{args.arch} + depth decoder training step at {TRAIN_HW[0]}x{TRAIN_HW[1]}, batch {args.train_batch_size}, "
          f"{threads} threads: {train:.2f} images/s{_busy(share.others)}")

    per_worker = loader.get(1)
    basis = "num_workers=1"
    if per_worker is None:
        per_worker, basis = 1 / per_image, "the one-thread stage times"
    best = max(loader.values()) if loader else per_worker
    print()
    print(f"{'':44s} {'images/s':>9s}")
    for n, v in loader.items():
        print(f"{'loader, num_workers=' + str(n):44s} {v:9.1f}")
    print(f"{'training step (' + args.arch + ', this CPU)':44s} {train:9.2f}")
    print(f"loader (best, {best:.1f}) / training step: {best / train:.1f}x; one worker / training step: "
          f"{per_worker / train:.1f}x")
    need = math.ceil(args.gpu_images_per_s / per_worker)
    print(f"a GPU training at {args.gpu_images_per_s:,.0f} images/s needs about {need} loader workers "
          f"({args.gpu_images_per_s:,.0f} / {per_worker:.1f} images/s per worker, from {basis}); this assumes one "
          f"core per worker at this CPU's speed and this pipeline (decode + resize + flip + jitter)")
    worst = max((o for o in others if o is not None), default=None)
    if worst is not None and worst > 0.05:
        print(f"warning: other processes took up to {100 * worst:.0f}% of the CPUs during a measurement: the "
              f"figures are distorted; rerun when the machine is idle")


def _busy(others: float | None) -> str:
    return f" (other processes: {100 * others:.0f}% of the CPUs)" if others is not None else ""


if __name__ == "__main__":
    main()
