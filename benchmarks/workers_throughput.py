"""Throughput of `--workers N` layouts on this machine, measured as a ratio in one run.

Times the same transfer training step (encoder + monodepth2 decoder, forward and backward) in
  A: one process using all cores' threads, and
  B: one process per core, one thread each, running concurrently,
and prints steps/s of each and B/A. This backs the quickstart's `workers: 2` choice.

    .venv/bin/python benchmarks/workers_throughput.py [--arch resnet18] [--steps 20]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time


def _steps_per_s(arch: str, threads: int, steps: int, size: tuple[int, int], batch: int) -> float:
    import torch

    from bench.core.models.backbones import create_encoder
    from bench.core.models.unet_decoder import UNetDecoder

    torch.set_num_threads(threads)
    enc = create_encoder(arch)
    dec = UNetDecoder(enc.channels, out_channels=7)
    x = torch.rand(batch, 3, *size)

    def step():
        dec(enc(x), size=size)[0].mean().backward()

    step()  # warm-up: allocator and kernel selection
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t0)


def _worker(args, queue):
    queue.put(_steps_per_s(*args))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--height", type=int, default=48)
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--batch", type=int, default=4)
    a = p.parse_args()
    cores = os.cpu_count() or 1
    shape = ((a.height, a.width), a.batch)

    single = _steps_per_s(a.arch, cores, a.steps, *shape)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=((a.arch, 1, a.steps, *shape), queue)) for _ in range(cores)]
    for proc in procs:
        proc.start()
    parallel = sum(queue.get() for _ in procs)
    for proc in procs:
        proc.join()
    print(f"{a.arch} {a.height}x{a.width} batch {a.batch}, {cores} cores")
    print(f"  1 process x {cores} threads : {single:6.2f} steps/s")
    print(f"  {cores} processes x 1 thread : {parallel:6.2f} steps/s")
    print(f"  ratio (workers={cores} / workers=1): {parallel / single:.2f}x")


if __name__ == "__main__":
    main()
