"""Layer x layer CKA of two harness encoders: bench.core.cka vs the `pytorch-cka` package, in one run.

Both compute Nguyen et al.'s minibatch (unbiased-HSIC) linear CKA over the same seeded random
images, the same layers (`layer_presets(model, "blocks")`) and the same batches, so their
matrices should agree. Prints, for each method, its time over the data (forward passes included;
per batch the fastest of --repeats runs, methods interleaved, so other load on the machine
hardly matters), its ratio to the package's, and its overhead over the bare forward passes of
both models on the same data; then the largest absolute difference between the two matrices,
whether the package returned NaN, and which of the two is off: both are compared with the
package's own formula evaluated in float64 on the same features.

pytorch-cka flattens every feature map (B x C*H*W), so the comparison runs our accumulator with
reduction="flatten"; our default (mean pooling) and our float32-Gram option are timed as well.

Random-init timm ResNets zero the last BatchNorm scale of every residual block, so a block with
an identity shortcut returns relu(input) = its (non-negative) input: in the default resnet18 pair
the two blocks of each stage have identical features, hence the repeated rows and columns.

    .venv/bin/python -m pip install pytorch-cka      # import name: cka
    .venv/bin/python benchmarks/cka_vs_pytorch_cka.py [--images N] [--batch-size B]
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from bench.core.cka import CKAAccumulator, layer_hooks, layer_presets
from bench.core.models.backbones import create_encoder


def _encoder(arch: str, seed: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_encoder(arch).to(device).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward(model_a, model_b, loader, device) -> None:
    with torch.inference_mode():
        for (x,) in loader:
            x = x.to(device)
            model_a(x)
            model_b(x)


def hooked_features(model_a, model_b, names_a, names_b, loader, device):
    """Per batch, the two models' hooked layer outputs (lists in layer order)."""
    with layer_hooks(model_a, names_a) as out_a, layer_hooks(model_b, names_b) as out_b, \
            torch.inference_mode():
        for (x,) in loader:
            x = x.to(device)
            model_a(x)
            model_b(x)
            yield list(out_a.values()), list(out_b.values())


def ours(model_a, model_b, names_a, names_b, loader, device, reduction, dtype=torch.float64) -> np.ndarray:
    acc = CKAAccumulator(len(names_a), len(names_b), reduction=reduction, dtype=dtype)
    for feats_a, feats_b in hooked_features(model_a, model_b, names_a, names_b, loader, device):
        acc.update(feats_a, feats_b)
    return acc.compute()


def package(model_a, model_b, names_a, names_b, loader, device) -> np.ndarray:
    from cka import compute_cka

    result = compute_cka(model_a, model_b, loader, layers=names_a, model2_layers=names_b,
                         device=device, progress=False)
    return result[0].double().cpu().numpy()


def float64_reference(model_a, model_b, names_a, names_b, loader, device) -> np.ndarray:
    """pytorch-cka's own HSIC formula on the same (flattened, float32) features, but in float64:
    any gap between this and the package is the package's float32 arithmetic."""
    from cka.hsic import hsic

    sums = None
    for feats in hooked_features(model_a, model_b, names_a, names_b, loader, device):
        grams = [torch.stack([f.flatten(1).double() @ f.flatten(1).double().T for f in side]) for side in feats]
        batch = hsic(*grams)
        sums = batch if sums is None else [s + b for s, b in zip(sums, batch)]
    xy, xx, yy = (t.cpu().numpy() for t in sums)
    return xy / np.sqrt(xx[:, None] * yy[None, :])


def time_per_batch(methods: dict, batches: list, repeats: int, device) -> dict[str, float]:
    """Sum over batches of the fastest of `repeats` runs of each method on that batch.

    Methods are interleaved batch by batch, and the minimum discards time stolen by other load on
    the machine, so the ratios stay meaningful on a busy 2-core box. Each timed call is a complete
    one-batch pass (hook registration, forward passes, CKA work) on a fresh accumulator; the cost of
    an update does not depend on what was accumulated before.
    """
    totals = {name: 0.0 for name in methods}
    for batch in batches:
        loader = [(batch,)]
        for name, fn in methods.items():
            best = float("inf")
            for _ in range(repeats):
                _sync(device)
                t0 = time.perf_counter()
                fn(loader)
                _sync(device)
                best = min(best, time.perf_counter() - t0)
            totals[name] += best
    return totals


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--arch-a", default="resnet18")
    p.add_argument("--arch-b", default="resnet18")
    p.add_argument("--preset", default="blocks", choices=["stages", "blocks"])
    p.add_argument("--repeats", type=int, default=5, help="timed runs per batch and method; the fastest counts")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    device = torch.device(a.device)

    have_package = importlib.util.find_spec("cka") is not None  # the pytorch-cka package
    if not have_package:
        print("pytorch-cka is not installed (.venv/bin/python -m pip install pytorch-cka): timing ours only")

    model_a = _encoder(a.arch_a, 0, device)
    model_b = _encoder(a.arch_b, 1, device)
    names_a, names_b = layer_presets(model_a, a.preset), layer_presets(model_b, a.preset)
    images = torch.rand(a.images, 3, a.image_size, a.image_size, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(images), batch_size=a.batch_size, shuffle=False)
    print(f"{a.arch_a} (seed 0) vs {a.arch_b} (seed 1), {len(names_a)} x {len(names_b)} layers "
          f"({a.preset}), {a.images} images {a.image_size}x{a.image_size}, batch {a.batch_size}, "
          f"{device}, {torch.get_num_threads()} threads")
    print(f"times: sum over batches of the fastest of {a.repeats} runs per batch, methods interleaved")

    def ours_with(reduction, dtype=torch.float64):
        return lambda ld: ours(model_a, model_b, names_a, names_b, ld, device, reduction, dtype)

    methods = {
        "bare forward (both models)": lambda ld: bare_forward(model_a, model_b, ld, device),
        "ours, flatten (= package)": ours_with("flatten"),
        "ours, flatten, float32 Grams": ours_with("flatten", torch.float32),
        "ours, mean pooling (default)": ours_with("mean"),
    }
    if have_package:
        methods["pytorch-cka (flatten)"] = lambda ld: package(model_a, model_b, names_a, names_b, ld, device)

    # The matrices: one full pass each over the loader.
    results = {name: fn(loader) for name, fn in methods.items() if name != "bare forward (both models)"}
    # The times (this pass also warms up allocator and kernels before the timed ones).
    seconds_by = time_per_batch(methods, [x for (x,) in loader], a.repeats, device)

    bare = seconds_by["bare forward (both models)"]
    reference = seconds_by.get("pytorch-cka (flatten)")
    print(f"\n{'method':32s} {'time s':>8s} {'vs package':>11s} {'over forward':>13s}")
    for name, seconds in seconds_by.items():
        ratio = f"{seconds / reference:10.2f}x" if reference else f"{'-':>11s}"
        overhead = f"{100 * (seconds - bare) / bare:+12.1f}%" if name != "bare forward (both models)" else f"{'-':>13s}"
        print(f"{name:32s} {seconds:8.2f} {ratio} {overhead}")

    ours_flat = results["ours, flatten (= package)"]
    print(f"\nours (flatten): finite {np.isfinite(ours_flat).all()}, range "
          f"[{np.nanmin(ours_flat):.4f}, {np.nanmax(ours_flat):.4f}]")
    if have_package:
        pkg = results["pytorch-cka (flatten)"]
        n_nan = int(np.isnan(pkg).sum())
        diff = np.abs(ours_flat - pkg)
        print(f"pytorch-cka: {n_nan} NaN of {pkg.size} entries"
              + (" -- the package's matrix is not usable as is" if n_nan else ""))
        print(f"largest |ours - pytorch-cka| = {np.nanmax(diff):.3e} "
              f"(at layers {tuple(int(i) for i in np.unravel_index(np.nanargmax(diff), diff.shape))}); "
              f"note pytorch-cka clamps to [0, 1] and computes in float32")
        # The package clamps; compare on entries where ours is already in [0, 1].
        inside = (ours_flat >= 0) & (ours_flat <= 1)
        if not inside.all():
            print(f"  ... over entries where ours is within [0, 1]: {np.nanmax(diff[inside]):.3e}")
        ref = float64_reference(model_a, model_b, names_a, names_b, loader, device)
        print(f"vs the package's formula in float64 on the same features: "
              f"max |ours - ref| = {np.abs(ours_flat - ref).max():.1e}, "
              f"max |pytorch-cka - clip(ref, 0, 1)| = {np.nanmax(np.abs(pkg - np.clip(ref, 0, 1))):.1e}")
    f32 = np.abs(results["ours, flatten, float32 Grams"] - ours_flat).max()
    print(f"ours with float32 Grams (centred features) vs float64 Grams: max |diff| = {f32:.1e}")
    print("\nours (flatten) matrix, rows = " + a.arch_a + " layers, cols = " + a.arch_b + " layers:")
    with np.printoptions(precision=3, suppress=True, linewidth=160):
        print(ours_flat)


if __name__ == "__main__":
    main()
