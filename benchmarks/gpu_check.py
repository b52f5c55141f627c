"""One command that checks the harness on a CUDA machine and prints its speeds, measured in one run.

For a machine with an existing PyTorch and no network, from a checkout:

    PYTHONPATH=. python3 benchmarks/gpu_check.py                       # the whole check, about 4 minutes
    PYTHONPATH=. python3 benchmarks/gpu_check.py --wheels /path/to/wheels --budget 200
    PYTHONPATH=. .venv/bin/python benchmarks/gpu_check.py --cpu-smoke  # on a CPU: section (a), one method, 2 steps
    PYTHONPATH=. .venv/bin/python benchmarks/gpu_check.py --cpu-all    # on a CPU: every section but (c), tiny (~2 min)

Set-up: a pure dependency of the harness that does not import (pydantic, safetensors, pyyaml,
tqdm, h5py, scipy, timm, pillow) is installed from local wheels, `--wheels DIR` or else the first
of ./wheels, shared/wheels, ./.whl that exists (`pip install --no-index --find-links DIR`, then
`--target` a temporary folder if that fails). pydantic-core is compiled: its wheel must be built
for this Python (the message says which tag). Then, on a CUDA device:

  (a) every registered pre-training method (`pretrain.methods.list_methods()`) for `--steps`
      steps on a generated world, with `device: cuda` and `precision: bf16` in its config:
      images/s, where it ran, its precision and peak GPU memory (from its summary);
  (b) one `full` transfer cell per registered decoder (prefix decoders such as `mmseg:` left
      out; a decoder whose extras do not import fails on its own line): steps/s and peak memory;
  (c) with two GPUs or more, the monodepth2 cell as 2 DDP processes (`processes=2`), against (b);
  (d) ResNet-50 + the monodepth2 decoder at 512x1024, batch 8, bf16 autocast, channels-last,
      AdamW: a bare PyTorch loop on batches already on the GPU against the same model in the
      harness's `full` cell (a generated world resized to Cityscapes size): their throughput ratio;
  (e) model FLOP utilisation: the FLOPs of one training step of (d)'s model
      (`torch.utils.flop_counter.FlopCounterMode`) x steps/s / the device's dense bf16 peak.

Every section checks the time left of `--budget` (default 225 s from the start) and is skipped,
with a note, when it would not fit. Without CUDA (or with `--cpu-smoke`) it prints
"no CUDA device: gpu_check needs one", runs section (a) for one method for 2 steps on the CPU,
so that the script itself is exercised, and exits 0.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T0 = time.perf_counter()
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the harness from this checkout, with or without PYTHONPATH
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched, ever

# import name -> pip name: what the harness imports that pip can install from wheels.
DEPENDENCIES = (("pydantic", "pydantic"), ("safetensors", "safetensors"), ("yaml", "pyyaml"), ("tqdm", "tqdm"),
                ("h5py", "h5py"), ("scipy", "scipy"), ("timm", "timm"), ("PIL", "pillow"))
WHEEL_FOLDERS = ("wheels", "shared/wheels", ".whl")
# Dense bf16 peaks by device name (vendor datasheets, TFLOP/s), most specific first.
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H200", 989.0), ("H100", 989.0), ("A100", 312.0))
RUNTIME_KEYS = ("device", "precision")
SUMMARY: list[str] = []  # the lines of the final table


def elapsed() -> float:
    return time.perf_counter() - T0


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]


def quiet(_msg: str) -> None:
    pass


class Budget:
    """Time left of the run; sections end by their share of it."""

    def __init__(self, total: float):
        self.total = total

    def until(self, fraction: float) -> float:
        return self.total * fraction - elapsed()

    def fits(self, need: float, fraction: float, what: str) -> bool:
        left = self.until(fraction)
        if left >= need:
            return True
        print(f"  [skipped] {what}: {max(left, 0):.0f} s left of this section's share of the {self.total:.0f} s "
              f"budget ({elapsed():.0f} s elapsed), needs about {need:.0f} s")
        return False


# --- set-up ------------------------------------------------------------------------------------------


def _import_problem(module: str) -> str | None:
    try:
        importlib.import_module(module)
        return None
    except Exception as exc:  # ImportError, or a compiled part built for another Python
        for name in [n for n in sys.modules if n == module or n.startswith(module + ".")]:
            del sys.modules[name]  # a half-imported package must not shadow the installed one
        return one_line(exc)


def ensure_dependencies(wheels: str | None) -> list[str]:
    """Install what does not import from local wheels; the import names still missing after."""
    missing = {mod: pip for mod, pip in DEPENDENCIES if _import_problem(mod)}
    if not missing:
        print("dependencies: all importable")
        return []
    print(f"dependencies not importable: {', '.join(missing)}")
    folders = [Path(wheels)] if wheels else [Path(f) for f in WHEEL_FOLDERS]
    folder = next((f for f in folders if f.is_dir()), None)
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}, {platform.machine()}"
    if folder is None:
        print(f"  no wheel folder found ({', '.join(map(str, folders))}); pass --wheels DIR with wheels of "
              f"{', '.join(missing.values())} and their requirements (compiled ones built for {tag})")
        return list(missing)
    print(f"  installing {', '.join(missing.values())} from {folder} (no index)")
    base = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--disable-pip-version-check"]
    attempts = [base + ["--find-links", str(folder), *missing.values()]]
    target = Path(tempfile.gettempdir()) / "gpu_check_site"
    wheel_files = sorted(str(p) for p in folder.glob("*.whl"))
    if wheel_files:  # where the environment is not writable: every wheel of the folder, to one side
        attempts.append(base + ["--no-deps", "--upgrade", "--target", str(target), *wheel_files])
    for k, cmd in enumerate(attempts):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        except subprocess.TimeoutExpired:
            print("  pip did not finish within 120 s")
            continue
        if proc.returncode == 0:
            if k == 1:
                sys.path.insert(0, str(target))
            break
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        print(f"  pip {'install' if k == 0 else 'install --target ' + str(target)} failed: {tail}")
    importlib.invalidate_caches()
    still = {mod: problem for mod in missing if (problem := _import_problem(mod))}
    for mod, problem in still.items():
        hint = f" (pydantic-core is compiled: its wheel must be for {tag})" if mod == "pydantic" else ""
        print(f"  still not importable: {mod}: {problem}{hint}")
    if not still:
        print("  installed; all importable")
    return list(still)


def make_world(root: Path, *, sequences: int, frames: int, height: int, width: int, crops: int = 8) -> Path:
    from bench.core.synth import render_world

    workers = min(sequences, 4) if (os.cpu_count() or 1) >= 8 else 1
    t0 = time.perf_counter()
    world = render_world(root, sequences=sequences, frames=frames, height=height, width=width, seed=0,
                         crops_per_class=crops, workers=workers)
    print(f"  generated world {height}x{width}, {sequences} sequences x {frames} frames in "
          f"{time.perf_counter() - t0:.1f} s")
    return world


def _cuda_reset():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _cuda_peak_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


# --- (a) pre-training methods ------------------------------------------------------------------------


def _run_pretrain(config: dict, out: Path) -> tuple[dict, str]:
    """run_pretrain with the runtime keys; if the config validation rejects them, without (noted)."""
    from bench.core.errors import UserError
    from pretrain.api import run_pretrain

    try:
        run_pretrain(config, out, progress=False, log=quiet)
        note = ""
    except (UserError, ValueError, KeyError, TypeError) as exc:
        if not any(k in str(exc) for k in RUNTIME_KEYS):
            raise
        print(f"  the config keys {', '.join(RUNTIME_KEYS)} were rejected ({one_line(exc)}): the change that adds "
              f"them has not landed; running without them")
        config = {k: v for k, v in config.items() if k not in RUNTIME_KEYS}
        run_pretrain(config, out.with_name(out.name + "-nokeys"), progress=False, log=quiet)
        out, note = out.with_name(out.name + "-nokeys"), " (without device/precision keys)"
    return json.loads((out / "summary.json").read_text()), note


def section_pretrain(budget: Budget, world: Path, tmp: Path, methods: list[str], *, steps: int, batch: int,
                     arch: str, device: str, precision: str, share: float) -> None:
    print(f"(a) pre-training: {len(methods)} method(s), {arch}, {steps} steps (the first included), batch {batch}, "
          f"device {device}, precision {precision}")
    estimate = 15.0
    for method in methods:
        if not budget.fits(estimate, share, f"pretrain {method}"):
            SUMMARY.append(f"(a) {method:22s} skipped (time)")
            continue
        config = {"name": method, "method": method, "arch": arch, "root": str(world), "data_id": "gpu_check",
                  "steps": steps, "batch_size": batch, "lr": 1e-4, "seed": 0, "state_every": 10**9,
                  "device": device, "precision": precision}
        _cuda_reset()
        t0 = time.perf_counter()
        try:
            summary, note = _run_pretrain(config, tmp / f"pre-{method}")
        except Exception as exc:
            print(f"  {method:18s} failed: {one_line(exc)}")
            SUMMARY.append(f"(a) {method:22s} failed: {one_line(exc)[:100]}")
            continue
        took = time.perf_counter() - t0
        estimate = max(estimate * 0.5, took * 1.2)
        peak = summary.get("peak_gpu_mb") or _cuda_peak_mb()
        ran = summary.get("device", "not recorded")
        where = f"on {ran}, {summary.get('precision', 'precision not recorded')}"
        if device.startswith("cuda") and not str(ran).startswith("cuda") and not (_cuda_peak_mb() or 0) > 0:
            where += " -- NOT on the GPU (the device key is not honoured here)"
        wait = summary.get("data_wait_fraction")
        extra = f", data wait {100 * wait:.0f}%" if wait is not None else ""
        mem = f", peak GPU {peak:.0f} MiB" if peak else ""
        print(f"  {method:18s} {summary['images_per_s']:8.1f} images/s  {where}{mem}{extra}; "
              f"loop {summary['wall_s']:.1f} s, whole run {took:.1f} s{note}")
        SUMMARY.append(f"(a) {method:22s} {summary['images_per_s']:9.1f} images/s  {where}{mem}")


# --- (b) transfer decoders ----------------------------------------------------------------------------


def _cell(arch: str, decoder: str, train_size: int, steps: int, batch: int, world: Path, device: str,
          dataset: dict | None = None, processes: int = 1) -> dict:
    from transfer.api import Cell, TransferSettings, resolve_cell_config

    cell = Cell("gpu_check", "none", arch, "synth", "full", decoder, train_size, 0)
    settings = TransferSettings(init="encoder", steps=steps, batch_size=batch, eval_every=steps, state_every=0)
    config = resolve_cell_config(cell, settings, dataset=dataset or {"name": "synth"}, dataset_root=world,
                                 data_id="gpu_check", processes=processes, device=device)
    config["device"] = device  # as transfer/train.py's train_cell reads it
    return config


def section_decoders(budget: Budget, world: Path, tmp: Path, *, steps: int, batch: int, arch: str, device: str,
                     share: float) -> dict[str, float]:
    from transfer.api import run_cell
    from transfer.decoders import list_decoders

    decoders = [d for d in list_decoders() if ":" not in d]  # prefix decoders need an argument (a config file)
    print(f"(b) transfer: one full cell per decoder ({', '.join(decoders)}), {arch}, {steps} steps, batch {batch}, "
          f"device {device}")
    speeds, estimate = {}, 15.0
    for decoder in decoders:
        if not budget.fits(estimate, share, f"transfer {decoder}"):
            SUMMARY.append(f"(b) {decoder:22s} skipped (time)")
            continue
        _cuda_reset()
        t0 = time.perf_counter()
        try:
            record = run_cell(_cell(arch, decoder, 16, steps, batch, world, device), tmp / f"cell-{decoder}",
                              progress=False)
        except Exception as exc:
            print(f"  {decoder:12s} failed: {one_line(exc)}")
            SUMMARY.append(f"(b) {decoder:22s} failed: {one_line(exc)[:100]}")
            continue
        took = time.perf_counter() - t0
        estimate = max(estimate * 0.5, took * 1.2)
        t = record["timings"]
        peak = _cuda_peak_mb()
        speeds[decoder] = t["steps_per_s"]
        mem = f", peak GPU {peak:.0f} MiB" if peak else ""
        print(f"  {decoder:12s} {t['steps_per_s']:8.2f} steps/s ({t['steps_per_s'] * batch:.0f} images/s) on "
              f"{record['device']}{mem}; train {t['train_s']:.1f} s, validation {t['eval_s']:.1f} s, "
              f"cell {t['wall_s']:.1f} s, mIoU {100 * record['metrics']['miou']:.1f}")
        SUMMARY.append(f"(b) {decoder:22s} {t['steps_per_s']:9.2f} steps/s   on {record['device']}{mem}")
    return speeds


# --- (c) two-process DDP -----------------------------------------------------------------------------


def ddp_child(world: str, out: str, steps: int, batch: int, arch: str) -> None:
    """(c)'s cell, in a process of its own (so that a hung process group cannot stall the check)."""
    from transfer.api import run_cell

    record = run_cell(_cell(arch, "monodepth2", 16, steps, batch, Path(world), "cuda", processes=2), out,
                      progress=False)
    print("DDP-RESULT " + json.dumps({"timings": record["timings"], "processes": record["processes"],
                                      "device": record["device"]}))


def section_ddp(budget: Budget, world: Path, tmp: Path, single: float | None, *, steps: int, batch: int,
                arch: str, share: float) -> None:
    import torch

    count = torch.cuda.device_count()
    if count < 2:
        print(f"(c) DDP: skipped, {count} GPU (needs 2)")
        SUMMARY.append(f"(c) {'DDP monodepth2 x2':22s} skipped ({count} GPU)")
        return
    print(f"(c) DDP: the monodepth2 cell as 2 processes on 2 of {count} GPUs, global batch {batch}")
    left = budget.until(share)
    if not budget.fits(30, share, "DDP cell"):
        SUMMARY.append(f"(c) {'DDP monodepth2 x2':22s} skipped (time)")
        return
    cmd = [sys.executable, str(Path(__file__).resolve()), "--ddp-child", str(world), str(tmp / "cell-ddp"),
           str(steps), str(batch), arch]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(10, left), check=False)
    except subprocess.TimeoutExpired:
        print(f"  did not finish within {left:.0f} s (stopped)")
        SUMMARY.append(f"(c) {'DDP monodepth2 x2':22s} timed out")
        return
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("DDP-RESULT ")), None)
    if proc.returncode != 0 or line is None:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        print(f"  failed (exit {proc.returncode}): {tail[:400]}")
        SUMMARY.append(f"(c) {'DDP monodepth2 x2':22s} failed")
        return
    result = json.loads(line[len("DDP-RESULT "):])
    sps = result["timings"]["steps_per_s"]
    vs = f", {sps / single:.2f}x the one-process cell of (b)" if single else ""
    print(f"  {result['processes']} processes: {sps:.2f} steps/s ({sps * batch:.0f} images/s){vs}")
    SUMMARY.append(f"(c) {'DDP monodepth2 x2':22s} {sps:9.2f} steps/s{vs}")


# --- (d) bare loop vs harness at Cityscapes size, (e) MFU ---------------------------------------------


class SimpleSegmentation:
    """Without the harness: timm's encoder + a 3x3-BN-ReLU-1x1 head on the deepest level."""

    @staticmethod
    def build(arch: str, classes: int):
        import timm
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder = timm.create_model(arch, pretrained=False, features_only=True)
                ch = self.encoder.feature_info.channels()[-1]
                self.decoder = nn.Sequential(nn.Conv2d(ch, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256),
                                             nn.ReLU(inplace=True), nn.Conv2d(256, classes, 1))

            def forward(self, images_uint8):
                x = (images_uint8.float() / 255.0 - 0.45) / 0.225
                logits = self.decoder(self.encoder(x)[-1])
                return torch.nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear",
                                                       align_corners=False)

        return Net()


def _bare(config: dict | None, arch: str, decoder: str, classes: int, size, batch: int, device, lr=1e-3,
          encoder_lr_mult=1.0, weight_decay=1e-4):
    """(model, step function) of the bare loop: batches already on the device, channels-last,
    bf16 autocast on CUDA, AdamW with a decoder and an encoder group."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    if config is not None:
        from transfer.model import build_model

        model, _ = build_model(arch, None, decoder, "encoder", classes, None, config.get("random_init", "timm"))
    else:
        model = SimpleSegmentation.build(arch, classes)
    cuda = device.type == "cuda"
    model.to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW([
        {"params": model.decoder.parameters(), "lr": lr},
        {"params": model.encoder.parameters(), "lr": lr * encoder_lr_mult},
    ], weight_decay=weight_decay)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, *size), generator=gen, device=device, dtype=torch.uint8)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch, *size), generator=gen, device=device)
    model.train()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(model(x).float(), y, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return model, step


def _timed(step, steps: int, device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    float(loss.detach())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def peak_tflops(name: str) -> float | None:
    return next((v for key, v in BF16_PEAK_TFLOPS if key.lower() in name.lower()), None)


def section_big(budget: Budget, tmp: Path, harness: bool, *, arch: str, decoder: str, size, batch: int,
                steps: int, device, share: float) -> None:
    h, w = size
    print(f"(d) {arch} + {decoder if harness else 'a simple head'} at {h}x{w}, batch {batch}, {steps} steps: "
          f"bare loop vs the harness's full cell")
    if not budget.fits(40, share, "(d)"):
        SUMMARY.append("(d) skipped (time)")
        return
    config, classes = None, 19
    if harness:
        world = make_world(tmp / "world-big", sequences=4, frames=6, height=max(48, h // 4), width=max(96, w // 4),
                           crops=2)
        config = _cell(arch, decoder, 8, steps, batch, world, str(device),
                       dataset={"name": "synth", "resize": f"{h}x{w}"})
        from transfer.datasets import open_dataset

        classes = len(open_dataset("synth", world).class_names)
    optim = (config or {}).get("optim", {})

    def bare():
        return _bare(config, arch, decoder, classes, (h, w), batch, device, lr=optim.get("lr", 1e-3),
                     encoder_lr_mult=optim.get("encoder_lr_mult", 1.0), weight_decay=optim.get("weight_decay", 1e-4))

    try:
        model, step = bare()
        _timed(step, 3, device)  # untimed warm-up: kernels of these shapes, for both sides
        del model, step
    except Exception as exc:
        print(f"  bare loop failed: {one_line(exc)}")
        SUMMARY.append(f"(d) bare loop failed: {one_line(exc)[:100]}")
        return
    harness_sps = None
    if harness and budget.fits(25, share, "(d) harness cell"):
        from transfer.api import run_cell

        _cuda_reset()
        try:
            record = run_cell(config, tmp / "cell-big", progress=False)
            t = record["timings"]
            harness_sps = t["steps_per_s"]
            peak = _cuda_peak_mb()
            mem = f", peak GPU {peak:.0f} MiB" if peak else ""
            print(f"  harness: {harness_sps:7.2f} steps/s ({harness_sps * batch:.0f} images/s) on {record['device']}"
                  f"{mem}; first step included (train {t['train_s']:.1f} s, validation {t['eval_s']:.1f} s apart)")
        except Exception as exc:
            print(f"  harness cell failed: {one_line(exc)}")
    _cuda_reset()
    _model, step = bare()  # a fresh model and optimiser, timed from its first step as the harness's clock is
    bare_sps = _timed(step, steps, device)
    peak = _cuda_peak_mb()
    mem = f", peak GPU {peak:.0f} MiB" if peak else ""
    print(f"  bare:    {bare_sps:7.2f} steps/s ({bare_sps * batch:.0f} images/s){mem}; first step included")
    if harness_sps:
        print(f"  harness / bare: {harness_sps / bare_sps:.2f}")
        SUMMARY.append(f"(d) {arch}/{decoder} {h}x{w} b{batch}: harness {harness_sps:.2f}, bare {bare_sps:.2f} "
                       f"steps/s, harness/bare {harness_sps / bare_sps:.2f}")
    else:
        SUMMARY.append(f"(d) {arch} {h}x{w} b{batch}: bare {bare_sps:.2f} steps/s (no harness figure)")
    section_mfu(budget, step, {"bare": bare_sps, "harness": harness_sps}, device)


def section_mfu(budget: Budget, step, speeds: dict, device) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    print("(e) model FLOP utilisation of (d)'s training step")
    if not budget.fits(8, 1.0, "(e)"):
        SUMMARY.append("(e) skipped (time)")
        return
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "CPU"
    peak = peak_tflops(name) if device.type == "cuda" else None
    print(f"  {flops / 1e12:.3g} TFLOP per training step (forward + backward, counted); device {name}: "
          f"{f'dense bf16 peak {peak:.0f} TFLOP/s' if peak else 'dense bf16 peak unknown'}")
    for who, sps in speeds.items():
        if not sps:
            continue
        achieved = flops * sps / 1e12
        mfu = f"MFU {100 * achieved / peak:.1f} %" if peak else "MFU unknown (no peak for this device)"
        print(f"  {who:8s} {achieved:7.3g} TFLOP/s achieved, {mfu}")
        SUMMARY.append(f"(e) {who:8s} {achieved:7.3g} TFLOP/s, {mfu}")


# --- the run -----------------------------------------------------------------------------------------


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wheels", help=f"folder of wheels for missing dependencies (default: {', '.join(WHEEL_FOLDERS)})")
    p.add_argument("--budget", type=float, default=225.0, help="seconds from the start for everything")
    p.add_argument("--steps", type=int, default=10, help="steps of each pre-training (a) and transfer cell (b, c)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--arch", default="resnet18", help="encoder of (a), (b) and (c)")
    p.add_argument("--big-arch", default="resnet50", help="encoder of (d) and (e)")
    p.add_argument("--big-decoder", default="monodepth2", help="decoder of (d): monodepth2 or deeplabv3")
    p.add_argument("--big-size", type=_size, default=(512, 1024), help="HxW of (d)")
    p.add_argument("--big-steps", type=int, default=20)
    p.add_argument("--cpu-smoke", action="store_true", help="CPU only: section (a), one method, 2 steps")
    p.add_argument("--cpu-all", action="store_true", help="CPU only: every section but (c) at tiny sizes, 2 steps "
                   "(slow: a few minutes; checks the script, measures nothing of interest)")
    p.add_argument("--ddp-child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.ddp_child:
        world, out, steps, batch, arch = args.ddp_child
        ddp_child(world, out, int(steps), int(batch), arch)
        return 0

    print(f"gpu_check: Python {platform.python_version()} ({sys.executable}), {platform.machine()}, "
          f"{os.cpu_count()} CPUs, budget {args.budget:.0f} s")
    missing = ensure_dependencies(args.wheels)
    import torch

    print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    harness, why = True, ""
    try:
        import pretrain.api  # noqa: F401
        import transfer.api  # noqa: F401
    except Exception as exc:
        harness, why = False, one_line(exc)
        print(f"the harness does not import ({why}){' -- missing: ' + ', '.join(missing) if missing else ''}; "
              f"only its bare-PyTorch parts can run")
    budget = Budget(args.budget)

    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        tmp = Path(tmp)
        if args.cpu_all:
            print("--cpu-all: every section but (c) on the CPU at tiny sizes, 2 steps each")
            budget.total = max(budget.total, 1800.0)
            _sections(budget, tmp, harness, why, args, device="cpu", precision="fp32", steps=2, batch=2,
                      world_size=(48, 144), big_arch="resnet18", big_size=(64, 128), big_steps=2)
            _print_summary()
            return 0
        if args.cpu_smoke or not torch.cuda.is_available():
            print("no CUDA device: gpu_check needs one" if not torch.cuda.is_available()
                  else "--cpu-smoke: a CUDA device is present but only the CPU smoke runs")
            if not harness:
                print(f"CPU smoke skipped: the harness does not import ({why})")
                return 0
            from pretrain.methods import list_methods

            methods = list_methods()
            method = "depth_supervised" if "depth_supervised" in methods else methods[0]
            print(f"CPU smoke of section (a): {method} for 2 steps (registered methods: {', '.join(methods)})")
            world = make_world(tmp / "world", sequences=3, frames=4, height=48, width=144, crops=2)
            section_pretrain(budget, world, tmp, [method], steps=2, batch=2, arch=args.arch, device="cpu",
                             precision="bf16", share=1.0)
            _print_summary()
            return 0

        props = torch.cuda.get_device_properties(0)
        print(f"CUDA: {torch.cuda.device_count()} x {props.name}, {props.total_memory / 2**30:.0f} GiB, "
              f"compute capability {props.major}.{props.minor}, {props.multi_processor_count} SMs")
        _sections(budget, tmp, harness, why, args, device="cuda", precision="bf16", steps=args.steps,
                  batch=args.batch_size, world_size=(96, 320), big_arch=args.big_arch, big_size=args.big_size,
                  big_steps=args.big_steps)
    _print_summary()
    return 0


def _sections(budget: Budget, tmp: Path, harness: bool, why: str, args, *, device: str, precision: str, steps: int,
              batch: int, world_size, big_arch: str, big_size, big_steps: int) -> None:
    import torch

    if harness:
        from pretrain.methods import list_methods

        world = make_world(tmp / "world", sequences=6, frames=8, height=world_size[0], width=world_size[1], crops=8)
        section_pretrain(budget, world, tmp, list_methods(), steps=steps, batch=batch, arch=args.arch, device=device,
                         precision=precision, share=0.45)
        speeds = section_decoders(budget, world, tmp, steps=steps, batch=batch, arch=args.arch, device=device,
                                  share=0.62)
        if device == "cuda":
            section_ddp(budget, world, tmp, speeds.get("monodepth2"), steps=steps, batch=batch, arch=args.arch,
                        share=0.75)
    else:
        print(f"(a), (b), (c) skipped: the harness does not import ({why})")
    section_big(budget, tmp, harness, arch=big_arch, decoder=args.big_decoder, size=big_size, batch=batch,
                steps=big_steps, device=torch.device(device), share=0.93)


def _print_summary() -> None:
    print()
    print(f"summary ({elapsed():.0f} s in all)")
    for line in SUMMARY:
        print("  " + line)


if __name__ == "__main__":
    sys.exit(main())
