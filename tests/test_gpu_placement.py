"""Each local worker process gets its own GPUs (bench/executors/local.py).

No GPU is needed: the node's GPUs are given to the executor (or read from CUDA_VISIBLE_DEVICES),
and the jobs report the CUDA_VISIBLE_DEVICES they run under. Nothing here initialises CUDA.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

# Light imports only at module level: the spawned workers import this module to unpickle its jobs.
from bench.core.errors import UserError
from bench.executors.job import Job
from bench.executors.local import LocalExecutor, gpu_slices, visible_gpus

FOUR = ["0", "1", "2", "3"]


def _visible_env() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def _visible_env_once_all_started(folder: str, expected: int) -> tuple[int, str | None]:
    """Waits until `expected` jobs run at once, so that each is held by its own worker process."""
    Path(folder, f"{os.getpid()}-{time.monotonic_ns()}").touch()
    deadline = time.monotonic() + 60
    while len(list(Path(folder).iterdir())) < expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def _touch(path: str) -> None:
    Path(path).touch()


def _jobs(fn, kwargs: dict, n: int, gpus: int, tmp_path: Path) -> list[Job]:
    resources = {"cpus": 1, "gpus": gpus, "memory_gb": None, "processes": None}  # one dict, as the runner gives
    return [Job(fn, kwargs, name=f"job{k}", out_dir=tmp_path / f"job{k}", resources=resources) for k in range(n)]


# --- the mapping ------------------------------------------------------------------------------

def test_four_gpus_two_workers_get_contiguous_blocks():
    assert gpu_slices(2, 1, FOUR) == ["0", "1"]  # GPUs 2 and 3 stay idle
    assert gpu_slices(2, 2, FOUR) == ["0,1", "2,3"]
    assert gpu_slices(1, 4, FOUR) == ["0,1,2,3"]


def test_cuda_visible_devices_is_respected(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6,7")
    assert visible_gpus() == ["3", "5", "6", "7"]
    assert gpu_slices(2, 1, visible_gpus()) == ["3", "5"]
    assert gpu_slices(2, 2, visible_gpus()) == ["3,5", "6,7"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []  # set but empty: no GPU
    assert visible_gpus([0, 1]) == ["0", "1"]  # given ids win over the environment


def test_too_many_gpus_is_one_line_with_the_numbers():
    with pytest.raises(UserError, match=r"^local executor: 2 workers x 3 GPUs per job \(executor\.resources\.gpus\) "
                                        r"need 6 GPUs but 4 are visible \(0,1,2,3\); lower workers or gpus$"):
        gpu_slices(2, 3, FOUR)
    with pytest.raises(UserError, match=r"need 1 GPU but 0 are visible \(none\)"):
        gpu_slices(1, 1, [])


def test_too_many_gpus_fails_before_any_job_runs(tmp_path):
    marker = tmp_path / "ran"
    jobs = _jobs(_touch, {"path": str(marker)}, 3, 2, tmp_path)
    for workers in (1, 3):  # in this process, and through the pool
        with pytest.raises(UserError, match=rf"{workers} workers? x 2 GPUs per job .* need {2 * workers} GPUs but "
                                            rf"1 is visible"):
            list(LocalExecutor(workers, visible_gpus=["0"]).run(jobs))
    assert not marker.exists()


def test_cpu_jobs_set_nothing(tmp_path, monkeypatch):
    assert gpu_slices(4, 0, FOUR) is None
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    [(_, seen, exc)] = LocalExecutor(1, visible_gpus=FOUR).run(_jobs(_visible_env, {}, 1, 0, tmp_path))
    assert exc is None and seen is None


# --- the executor ----------------------------------------------------------------------------

def test_one_worker_in_process_runs_on_the_first_block_and_restores(tmp_path, monkeypatch):
    import torch

    assert not torch.cuda.is_initialized()  # else the executor rightly leaves the variable alone
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6,7")
    results = list(LocalExecutor(1).run(_jobs(_visible_env, {}, 2, 2, tmp_path)))
    assert results == [(0, "3,5", None), (1, "3,5", None)]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5,6,7"  # the next stage starts from the node's view


def _run_two_at_once(executor: LocalExecutor, gpus: int, tmp_path: Path) -> list[tuple[int, str | None]]:
    """(pid, CUDA_VISIBLE_DEVICES) of two jobs asking for `gpus` GPUs, held by two workers."""
    started = tmp_path / f"started-{gpus}"
    started.mkdir()
    jobs = _jobs(_visible_env_once_all_started, {"folder": str(started), "expected": 2}, 2, gpus, tmp_path)
    results = list(executor.run(jobs))
    assert all(exc is None for _, _, exc in results), results
    assert len({pid for _, (pid, _), _ in results} - {os.getpid()}) == 2  # two worker processes
    return [result for _, result, _ in results]


def test_spawned_workers_each_see_their_own_gpus(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    executor = LocalExecutor(2, visible_gpus=["3", "5", "6", "7"])
    assert sorted(seen for _, seen in _run_two_at_once(executor, 2, tmp_path)) == ["3,5", "6,7"]
    # CPU jobs (a later stage, fresh workers): nothing set, they see what the driver sees.
    assert [seen for _, seen in _run_two_at_once(executor, 0, tmp_path)] == [None, None]


def test_a_pretraining_job_asks_for_the_gpus_its_manifest_names():
    from types import SimpleNamespace

    from bench.study.runner import pretrain_config, pretrain_resources

    executor = {"cpus": 4, "gpus": 1, "memory_gb": None, "processes": 2}
    backbone = SimpleNamespace(pretrain=SimpleNamespace(gpus=4))
    assert pretrain_resources(backbone, executor) == {"cpus": 4, "gpus": 4, "memory_gb": None}
    backbone.pretrain.gpus = 0  # unset: the executor's, without the cells' DDP ranks
    assert pretrain_resources(backbone, executor) == {"cpus": 4, "gpus": 1, "memory_gb": None}

    from bench.study.manifest import PretrainSpec

    spec = PretrainSpec(method="depth_supervised", steps=10, gpus=2)
    config = pretrain_config(SimpleNamespace(name="d", display_name="d", arch="resnet18", pretrain=spec), Path("/w"), "world")
    assert config["gpus"] == 2 and config["processes"] == 2  # one data-parallel rank per GPU


def test_the_workers_share_the_cores_this_process_may_use(monkeypatch):
    from bench.executors.local import cpu_budget

    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # a cap a test runner or batch scheduler set
    assert cpu_budget() == 3
    assert LocalExecutor(workers=2).threads == 1 and LocalExecutor(workers=1).threads == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cpu_budget() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "many")  # not a number: the CPUs this process may run on
    assert cpu_budget() == len(os.sched_getaffinity(0))
    assert LocalExecutor(workers=64).threads == 1


def _pid() -> int:
    return os.getpid()


def _die() -> None:
    os._exit(3)  # like a worker killed mid-job


def test_one_pool_serves_every_stage_until_closed(tmp_path):
    executor = LocalExecutor(workers=2)
    jobs = [Job(_pid, {}, name=f"j{k}", out_dir=tmp_path / f"j{k}") for k in range(4)]
    # A worker that dies breaks the pool for its stage only: the next stage gets a new one.
    outcomes = list(executor.run([Job(_die, {}, name="dies", out_dir=tmp_path / "dies"),
                                  Job(_pid, {}, name="x", out_dir=tmp_path / "x")]))
    assert any(exc is not None for _, _, exc in outcomes) and executor._pool is None
    first = {pid for _, pid, exc in executor.run(jobs) if exc is None}
    pool = executor._pool
    processes = dict(pool._processes)
    second = {pid for _, pid, _ in executor.run(jobs)}  # the next stage: the same processes
    assert len(first) >= 1 and executor._pool is pool and first | second <= set(processes)
    assert os.getpid() not in first
    executor.close()
    assert executor._pool is None and not any(p.is_alive() for p in processes.values())
