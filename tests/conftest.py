"""Shared fixtures: one tiny generated world per test session, and tiny manifests."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_WORLD = {"sequences": 3, "frames": 4, "height": 48, "width": 144, "seed": 0, "crops_per_class": 6}


def _test_threads() -> int | None:
    """BENCH_TEST_THREADS as a number of torch threads, or None when unset (or empty)."""
    value = os.environ.get("BENCH_TEST_THREADS", "").strip()
    return int(value) if value else None


@pytest.fixture(scope="session", autouse=True)
def bench_test_threads():
    """BENCH_TEST_THREADS=N runs the whole session at N torch threads (torch.set_num_threads), and
    `one_thread` modules at N too: a numeric verdict must hold at any thread count, since the
    count changes the order of float reductions, and benchmarks/test_margins.py runs the suite
    at 1 and 2 to show it does. Unset: torch's default, and nothing is imported."""
    threads = _test_threads()
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models (`pytestmark = pytest.mark.usefixtures("one_thread")`): they gain
    nothing from a second thread, and on a busy 2-core machine the spinning OpenMP workers cost
    many times the work itself (a 5M-tensor isfinite: 2 s instead of 30 ms). With
    BENCH_TEST_THREADS=N set, N threads instead of 1 (see `bench_test_threads`)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(_test_threads() or 1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    from bench.core.synth import render_world

    return render_world(tmp_path_factory.mktemp("world") / "synth", **TINY_WORLD)


@pytest.fixture(scope="session")
def tiny_depth_ckpt(tiny_world, tmp_path_factory) -> Path:
    """A supervised-depth checkpoint (resnet10t, encoder + monodepth2 decoder) of the tiny world."""
    from pretrain.api import run_pretrain

    config = {"name": "depth", "method": "depth_supervised", "arch": "resnet10t", "root": str(tiny_world),
              "data_id": "tiny", "steps": 4, "batch_size": 2, "lr": 1e-3, "seed": 0}
    return run_pretrain(config, tmp_path_factory.mktemp("pre") / "depth", progress=False, log=lambda m: None)


TINY_WORLD_YAML = "{" + ", ".join(f"{k}: {v}" for k, v in TINY_WORLD.items()) + "}"


def write_manifest(tmp_path: Path, *, backbones: str, datasets: str = "  - {name: synth}\n", transfer: str = "",
                   worlds: str = "", name: str = "m", out: Path | None = None) -> Path:
    """A manifest over the tiny world, written from its sections' YAML: `backbones` and `datasets`
    as list items (`  - {...}` lines), `transfer` as the whole `transfer:` line or block, `worlds`
    as the lines of `data.worlds` (indented 4). `out`: its results folder (default: none given)."""
    head = f"name: {name}\n" + (f"out: {out}\n" if out is not None else "")
    data = f"data:\n  synth: {TINY_WORLD_YAML}\n" + (f"  worlds:\n{worlds}" if worlds else "")
    path = tmp_path / f"{name}.yaml"
    path.write_text(head + data + "backbones:\n" + backbones + "datasets:\n" + datasets + transfer)
    return path


def tiny_manifest(tmp_path: Path, *, name="tiny", out=None, extra_backbones="", steps=6, pretrain_steps=6,
                  protocols="[full, frozen, linear]", seeds="[0]") -> Path:
    """A manifest small enough for a test: resnet10t, a 48×144 world, a handful of steps."""
    text = f"""
    name: {name}
    out: {out or tmp_path / 'results'}
    data:
      synth: {TINY_WORLD_YAML}
    backbones:
      - name: random
        arch: resnet10t
      - name: depth
        arch: resnet10t
        pretrain: {{method: depth_supervised, steps: {pretrain_steps}, batch_size: 2, state_every: 2}}
      - name: cls
        arch: resnet10t
        pretrain: {{method: classification, steps: {pretrain_steps}, batch_size: 4}}
    {extra_backbones}
    datasets:
      - name: synth
    transfer:
      protocols: {protocols}
      train_sizes: [4]
      seeds: {seeds}
      steps: {steps}
      batch_size: 2
      eval_every: 3
    """
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def cell_config(root, cell, *, checkpoint=None, optim: dict | None = None, dataset: dict | None = None,
                data_id: str = "tiny", processes: int = 1, **settings) -> dict:
    """A resolved transfer-cell config through the one resolver (`transfer.api.resolve_cell_config`),
    as a test spells it: `optim` is one layer over the protocol's preset, `dataset` the geometry
    overrides (default: the dataset's own), `settings` any other `TransferSettings` field."""
    from transfer.api import TransferSettings, resolve_cell_config

    if optim:
        settings["optimizer"] = {cell.protocol: optim}
    return resolve_cell_config(cell, TransferSettings(**settings), dataset={"name": cell.dataset, **(dataset or {})},
                               dataset_root=root, data_id=data_id, checkpoint=checkpoint, processes=processes)
