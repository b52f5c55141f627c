"""Shared fixtures: one tiny generated world per test session, and tiny manifests."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each of pytest-xdist's worker processes takes one core (`make test` runs two): torch, and the
    # harness's executors (bench.executors.local.cpu_budget), read their thread count from this.
    # Two processes each spinning two OpenMP threads on two cores run many times slower.
    os.environ["OMP_NUM_THREADS"] = "1"

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


def shared_folder(tmp_path_factory) -> Path:
    """A folder every process of this test session sees: under pytest-xdist, the parent of the
    workers' own temporary folders (the first worker to need a shared artefact builds it there
    under a lock, the others wait and read it); without xdist, the session's temporary folder."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def finished_matrix(tmp_path_factory) -> Path:
    """The results folder of `tiny_manifest` run to the end once per session (random, a depth and a
    classification pre-training; full, frozen and linear; one seed: 9 cells, plots included), for
    the tests that only read a finished matrix. READ ONLY: a test that changes it works on a copy
    (`copy_results`). What `bench run` printed is in its `stdout.txt` beside it."""
    from bench.cli import main
    from bench.core.claims import exclusive_lock

    folder = shared_folder(tmp_path_factory) / "finished_matrix"
    results = folder / "results"
    with exclusive_lock(folder.parent / "finished_matrix.lock"):
        if not (folder / "stdout.txt").is_file():  # written last: a folder without it is a build that died
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                assert main(["run", str(tiny_manifest(folder)), "--no-progress"]) == 0
            (folder / "stdout.txt").write_text(printed.getvalue())
    return results


def copy_results(results: Path, dest: Path) -> Path:
    """A copy of a results folder (`finished_matrix`) that a test may change; its manifest
    (`tiny.yaml` beside the original) is copied too, pointing at the copy."""
    shutil.copytree(results, dest / "results")
    manifest = results.parent / "tiny.yaml"
    if manifest.is_file():
        text = manifest.read_text().replace(f"out: {results}\n", f"out: {dest / 'results'}\n")
        (dest / "tiny.yaml").write_text(text)
    return dest / "results"


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
                  protocols="[full, frozen, linear]", seeds="[0]", classification=True) -> Path:
    """A manifest small enough for a test: resnet10t, a 48×144 world, a handful of steps; random,
    a depth pre-training and (`classification`) a classification one."""
    cls = (f"  - {{name: cls, arch: resnet10t, pretrain: {{method: classification, steps: {pretrain_steps}, "
           f"batch_size: 4}}}}") if classification else ""
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
    {cls}
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
