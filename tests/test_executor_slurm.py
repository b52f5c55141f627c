"""The Slurm executor through submitit's local cluster (jobs are subprocesses; no Slurm needed).

Skipped without submitit (the `slurm` extra) unless BENCH_REQUIRE_SLURM=1, which makes a missing
submitit a failure. Preemption is simulated the way Slurm announces it: SIGUSR2 to the job's
process, on which submitit checkpoints and requeues the job.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

# Light imports only at module level: each job subprocess imports this module to unpickle its function.
from bench.core.errors import UserError
from bench.executors.job import Job

HERE = Path(__file__).resolve().parent


@pytest.fixture
def submitit(monkeypatch):
    if os.environ.get("BENCH_REQUIRE_SLURM") == "1":
        import submitit
    else:
        submitit = pytest.importorskip("submitit")
    # The job subprocesses unpickle this module's functions by name: let them import it.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    return submitit


# Module-level, so that the job subprocesses can unpickle them.
def _slow_once(marker: str, seconds: float) -> str:
    """Slow on its first run (which the test preempts), quick on the next."""
    path = Path(marker)
    first = not path.exists()
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    if first:
        time.sleep(seconds)
        return "slept through"
    return "done"


def _wait_for(release: str, value: str) -> str:
    """Runs until the test creates `release` (so the test decides when the job is done)."""
    t0 = time.time()
    while not Path(release).exists() and time.time() - t0 < 60:
        time.sleep(0.05)
    return value


def _raise_user_error() -> None:
    raise UserError("bad input")


def _die() -> None:
    os._exit(3)  # like an out-of-memory kill: no result, no traceback


def _preempt_when_started(marker: Path, timeout: float = 60) -> threading.Thread:
    """Send SIGUSR2 (Slurm's preemption/timeout signal under submitit) to the job's first run."""
    def go():
        t0 = time.time()
        while time.time() - t0 < timeout:
            if marker.exists() and marker.read_text().strip():
                os.kill(int(marker.read_text().split()[0]), signal.SIGUSR2)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def test_missing_submitit_is_one_user_error(tmp_path, monkeypatch):
    from bench.executors import make_executor
    from bench.study.manifest import ExecutorSpec

    monkeypatch.setitem(sys.modules, "submitit", None)  # makes `import submitit` fail
    with pytest.raises(UserError, match=r'pip install -e "\.\[slurm\]"'):
        make_executor(ExecutorSpec(kind="slurm"), out_dir=tmp_path)


def test_preemption_requeues_the_job_and_it_completes(submitit, tmp_path):
    from bench.executors.slurm import SlurmExecutor
    from bench.study.manifest import SlurmSpec

    out = tmp_path / "cell"
    marker = out / "runs.txt"
    out.mkdir()
    job = Job(_slow_once, {"marker": str(marker), "seconds": 60}, name="cell", out_dir=out)
    executor = SlurmExecutor(SlurmSpec(cluster="local", max_requeues=1), out_dir=tmp_path)
    thread = _preempt_when_started(marker)
    # "done", not "slept through": the first run was interrupted in its sleep and the requeued one returned
    assert list(executor.run([job])) == [(0, "done", None)]
    thread.join()
    pids = marker.read_text().split()
    assert len(pids) == 2 and pids[0] != pids[1]  # ran twice, in two processes
    log = (out / "log.txt").read_text()
    assert "requeued (1/1)" in log and log.count("started as job") == 2
    info = json.loads((out / "slurm.json").read_text())
    assert set(info) >= {"job_id", "array_index", "submitted_at", "folder"}
    assert info["folder"] == str(tmp_path / "slurm")


def test_a_job_past_max_requeues_fails(submitit, tmp_path):
    from bench.executors.slurm import SlurmExecutor
    from bench.study.manifest import SlurmSpec

    out = tmp_path / "cell"
    marker = out / "runs.txt"
    out.mkdir()
    job = Job(_slow_once, {"marker": str(marker), "seconds": 60}, name="cell", out_dir=out)
    executor = SlurmExecutor(SlurmSpec(cluster="local", max_requeues=0), out_dir=tmp_path)
    thread = _preempt_when_started(marker)
    [(i, result, exc)] = list(executor.run([job]))
    thread.join()
    assert i == 0 and result is None and "not requeued" in str(exc)
    assert len(marker.read_text().split()) == 1
    log = (out / "log.txt").read_text()
    assert "not requeued" in log and "Traceback" in log  # the cell's own log keeps the traceback


def test_no_wait_submits_once_then_collects(submitit, tmp_path):
    from bench.executors.slurm import SlurmExecutor, job_state
    from bench.study.manifest import SlurmSpec

    spec = SlurmSpec(cluster="local", wait=False)
    release = tmp_path / "release"
    jobs = [Job(_wait_for, {"release": str(release), "value": f"v{k}"}, name=f"j{k}", out_dir=tmp_path / f"j{k}")
            for k in range(2)]
    assert job_state(jobs[0].out_dir) is None
    assert sorted(SlurmExecutor(spec, out_dir=tmp_path).run(jobs)) == [(0, "submitted", None), (1, "submitted", None)]
    ids = [json.loads((j.out_dir / "slurm.json").read_text())["job_id"] for j in jobs]
    assert len(set(ids)) == 2 and all(job_state(j.out_dir) == "RUNNING" for j in jobs)
    pickles = sorted((tmp_path / "slurm").glob("*_submitted.pkl"))

    # A second `bench run` while they run: nothing is submitted again.
    assert sorted(SlurmExecutor(spec, out_dir=tmp_path).run(jobs)) == [(0, "submitted", None), (1, "submitted", None)]
    assert [json.loads((j.out_dir / "slurm.json").read_text())["job_id"] for j in jobs] == ids
    assert sorted((tmp_path / "slurm").glob("*_submitted.pkl")) == pickles

    # A job for the same folder but another config: the running one is cancelled, not awaited.
    jobs[0] = Job(_wait_for, {"release": str(release), "value": "new"}, name="j0", out_dir=tmp_path / "j0")
    assert list(SlurmExecutor(spec, out_dir=tmp_path).run(jobs[:1])) == [(0, "submitted", None)]
    new_id = json.loads((jobs[0].out_dir / "slurm.json").read_text())["job_id"]
    assert new_id != ids[0] and "out of date" in (jobs[0].out_dir / "log.txt").read_text()
    t0 = time.time()
    while _alive(ids[0]) and time.time() - t0 < 60:  # a loaded 2-core CI box can take a while
        time.sleep(0.1)
    assert not _alive(ids[0])

    # One that waits attaches to the running jobs and collects their results.
    release.touch()
    waiting = SlurmExecutor(spec.model_copy(update={"wait": True}), out_dir=tmp_path)
    assert sorted(waiting.run(jobs)) == [(0, "new", None), (1, "v1", None)]
    assert [json.loads((j.out_dir / "slurm.json").read_text())["job_id"] for j in jobs] == [new_id, ids[1]]
    assert all(job_state(j.out_dir) == "FINISHED" for j in jobs)


def _alive(job_id: str) -> bool:
    from bench.executors.slurm import _pid_alive

    return _pid_alive(int(job_id))


def test_a_job_that_dies_is_one_failure_naming_its_log(submitit, tmp_path):
    from bench.executors.slurm import SlurmExecutor, SlurmJobFailed
    from bench.study.manifest import SlurmSpec

    job = Job(_die, {}, name="cell", out_dir=tmp_path / "cell")
    [(i, result, exc)] = list(SlurmExecutor(SlurmSpec(cluster="local"), out_dir=tmp_path).run([job]))
    assert isinstance(exc, SlurmJobFailed) and "_log.err" in str(exc) and "\n" not in str(exc)


def test_job_errors_keep_their_type(submitit, tmp_path):
    """The runner does not retry a UserError: the type must survive the trip through submitit."""
    from bench.executors.slurm import SlurmExecutor
    from bench.study.manifest import SlurmSpec

    job = Job(_raise_user_error, {}, name="cell", out_dir=tmp_path / "cell")
    [(i, result, exc)] = list(SlurmExecutor(SlurmSpec(cluster="local"), out_dir=tmp_path).run([job]))
    assert isinstance(exc, UserError) and str(exc) == "bad input"
    assert "Traceback" in (tmp_path / "cell" / "log.txt").read_text()


def test_sbatch_script_carries_the_spec_and_resources(submitit, tmp_path, monkeypatch):
    """No Slurm here: check the script submitit would give sbatch."""
    from bench.executors.slurm import SlurmExecutor
    from bench.study.manifest import SlurmSpec

    with pytest.raises(UserError, match="no srun here"):
        SlurmExecutor(SlurmSpec(), out_dir=tmp_path)
    _fake_slurm(tmp_path, monkeypatch)
    spec = SlurmSpec(partition="gpu", account="proj", time_min=30, array_parallelism=8,
                     sbatch={"constraint": "a100", "mail-type": "END", "qos": "high"})
    ex = SlurmExecutor(spec, out_dir=tmp_path)._executor({"cpus": 4, "gpus": 2, "memory_gb": 16})
    slurm = ex._executor
    slurm.parameters["map_count"] = 20  # what an array of 20 jobs sets
    script = slurm._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for line in ["--partition=gpu", "--account=proj", "--time=30", "--cpus-per-task=4", "--gpus-per-task=2",
                 "--ntasks=1", "--mem=16GB", "--constraint=a100", "--mail-type=END", "--qos=high", "--array=0-19%8",
                 "--requeue", "--job-name=bench-"]:
        assert f"#SBATCH {line}" in script, line
    assert "--gpus-per-node" not in script  # per task: Slurm binds the GPUs to the job's task
    assert slurm.max_num_timeout == spec.max_requeues


def _fake_slurm(tmp_path: Path, monkeypatch) -> Path:
    """An srun (submitit only looks for it) and an sbatch that keeps a copy of each script it is
    given and answers as Slurm does; returns the folder of the copies (0.sh, 1.sh, ...)."""
    fake, scripts = tmp_path / "bin", tmp_path / "submitted"
    fake.mkdir()
    scripts.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake / "sbatch").write_text(f'#!/bin/sh\nn=$(ls "{scripts}" | wc -l)\ncp "$1" "{scripts}/$n.sh"\n'
                                 f'echo "Submitted batch job $((4242 + n))"\n')
    for tool in ("srun", "sbatch"):
        (fake / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    return scripts


def test_a_gpu_job_is_submitted_asking_for_its_gpus_per_task(submitit, tmp_path, monkeypatch):
    """What reaches sbatch: 2 GPUs per task for a gpus=2 job, no GPU flag at all for a CPU job."""
    from bench.executors.slurm import SlurmExecutor
    from bench.study.manifest import SlurmSpec

    scripts = _fake_slurm(tmp_path, monkeypatch)
    jobs = [Job(_slow_once, {"marker": "unused", "seconds": 0}, name=name, out_dir=tmp_path / name,
                resources={"cpus": 4, "gpus": gpus, "memory_gb": None}) for name, gpus in (("gpu", 2), ("cpu", 0))]
    executor = SlurmExecutor(SlurmSpec(partition="gpu", wait=False), out_dir=tmp_path)
    assert sorted(executor.run(jobs)) == [(0, "submitted", None), (1, "submitted", None)]
    submitted = [p.read_text() for p in sorted(scripts.glob("*.sh"))]
    assert len(submitted) == 2  # one array per distinct resources
    gpu = [s for s in submitted if "--gpus-per-task" in s]
    cpu = [s for s in submitted if "--gpus-per-task" not in s]
    assert len(gpu) == len(cpu) == 1
    assert "#SBATCH --gpus-per-task=2\n" in gpu[0] and "#SBATCH --ntasks=1\n" in gpu[0]
    assert "--gpus-per-node" not in gpu[0]
    cpu_flags = {line.split("=")[0] for line in cpu[0].splitlines() if line.startswith("#SBATCH --")}
    assert not {f for f in cpu_flags if "gpu" in f or "gres" in f}, cpu_flags  # a CPU job asks for no GPU
    assert all("#SBATCH --cpus-per-task=4\n" in s for s in submitted)
    assert json.loads((tmp_path / "gpu" / "slurm.json").read_text())["job_id"] in {"4242", "4243"}


def _manifest(tmp_path: Path) -> Path:
    """A tiny matrix (like conftest's tiny_manifest): a random resnet10t, two protocols, a few
    steps; its executor is Slurm on submitit's local cluster. (Two cells: every job process pays
    ~6 s CPU importing bench.study.runner. No pre-trained backbone: a checkpoint's metadata holds its
    run's wall time, so two pre-trainings never share a sha256, nor their cells a fingerprint.)"""
    text = f"""
    name: slurmy
    out: {tmp_path / 'unused'}
    data:
      synth: {{sequences: 3, frames: 4, height: 48, width: 144, seed: 0, crops_per_class: 6}}
    backbones:
      - name: random
        arch: resnet10t
    datasets:
      - name: synth
    transfer:
      protocols: [frozen, linear]
      train_sizes: [4]
      seeds: [0]
      steps: 3
      batch_size: 2
      eval_every: 3
    executor:
      kind: slurm
      slurm: {{cluster: local}}
    """
    path = tmp_path / "slurmy.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _records(results: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in results.glob("runs/*/record.json")}


def test_a_manifest_through_slurm_matches_the_local_executor(submitit, tmp_path):
    from bench.study.runner import run_manifest

    manifest = _manifest(tmp_path)
    local, slurm = tmp_path / "local", tmp_path / "slurm"
    # Records are what this compares: no figures
    assert run_manifest(manifest, out=local, progress=False, executor_overrides={"kind": "local"}, plots=False) == 0
    assert run_manifest(manifest, out=slurm, progress=False, executor_overrides={"kind": "slurm"}, plots=False) == 0

    a, b = _records(local), _records(slurm)
    assert len(a) == 2 and sorted(a) == sorted(b)
    for cell, rec in a.items():
        assert b[cell]["status"] == rec["status"] == "ok"
        assert b[cell]["fingerprint"] == rec["fingerprint"]
        assert b[cell]["metrics"] == rec["metrics"]
        assert (slurm / "runs" / cell / "slurm.json").is_file()
        assert not (local / "runs" / cell / "slurm.json").exists()
    assert list((slurm / "slurm").glob("*_result.pkl"))  # submitit's folder defaults to RESULTS/slurm


def _cell_preempted_after_first_state(config: dict, out_dir: str, marker: str):
    """A real transfer cell whose first run announces itself (for the preemption) right after
    saving its first in-cell state, then stalls; the requeued run must resume from that state."""
    import transfer.train as tt
    from transfer.api import run_cell

    if not Path(marker).exists():
        original = tt.save_cell_state

        def save_then_stall(*args, **kwargs):
            original(*args, **kwargs)
            Path(marker).write_text(f"{os.getpid()}\n")
            time.sleep(60)

        tt.save_cell_state = save_then_stall
    record = run_cell(config, Path(out_dir), progress=False)
    return record["timings"]["resumed_from_step"], record["status"]


def test_a_preempted_cell_resumes_from_its_in_cell_state(submitit, tiny_world, tmp_path):
    from bench.executors.slurm import SlurmExecutor
    from bench.study.manifest import SlurmSpec
    from tests.conftest import cell_config
    from transfer.api import Cell

    cell = Cell("random", "none", "resnet10t", "synth", "full", "monodepth2", 2, 0)
    config = cell_config(tiny_world, cell, steps=6, batch_size=2, eval_every=3, optim={"lr": 1e-3}, state_every=2)
    out = tmp_path / "cell"
    marker = tmp_path / "first-run.txt"
    job = Job(_cell_preempted_after_first_state, {"config": config, "out_dir": str(out), "marker": str(marker)},
              name="cell", out_dir=out)
    thread = _preempt_when_started(marker)
    results = list(SlurmExecutor(SlurmSpec(cluster="local", max_requeues=1), out_dir=tmp_path).run([job]))
    thread.join()
    assert results == [(0, (2, "ok"), None)]  # the requeued run started at step 2, not 0
    assert json.loads((out / "record.json").read_text())["timings"]["resumed_from_step"] == 2
    assert "requeued (1/1)" in (out / "log.txt").read_text()
