"""The Ray executor on a local Ray instance (2 CPUs), against the local executor.

Skipped without Ray (the `ray` extra) unless BENCH_REQUIRE_RAY=1, which makes a missing Ray a
failure. One Ray instance serves the module: an executor starts it (so the executor's own
start/stop path is what runs), every `bench run` executor joins it, and the module's teardown
checks that closing the last one stops Ray and every process it started.

A checkpoint holds no run-specific values (its wall-clock times go to summary.json), so the same
config trained by another executor gives the same file, and the cells on it the same
fingerprints: Ray runs from scratch, pre-training included, and must give the local run's
checkpoint, fingerprints and metrics bit for bit. CPU kernels sum in an order that depends on the
thread count: each Ray task asks for as many CPUs as the local run's jobs had threads.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import textwrap
from pathlib import Path

import pytest

try:
    import ray
except ImportError as exc:
    if os.environ.get("BENCH_REQUIRE_RAY") == "1":
        raise ImportError('BENCH_REQUIRE_RAY=1 but Ray cannot be imported: pip install -e ".[ray]"') from exc
    pytest.skip("ray is not installed (the `ray` extra)", allow_module_level=True)

from bench.executors.ray import RayExecutor, _rewrite
from bench.executors.job import Job
from bench.executors.local import LocalExecutor
from bench.study.manifest import RaySpec
from bench.study.jobs import transfer_job as _transfer_job
from bench.study.runner import run_manifest

HERE = Path(__file__).resolve().parent


def _manifest(tmp_path: Path, executor: str = "") -> Path:
    """A tiny matrix: a random and a depth-pre-trained resnet10t, two protocols, 3 steps."""
    text = f"""
    name: rayish
    data:
      synth: {{sequences: 3, frames: 4, height: 48, width: 144, seed: 0, crops_per_class: 6}}
    backbones:
      - name: random
        arch: resnet10t
      - name: depth
        arch: resnet10t
        pretrain: {{method: depth_supervised, steps: 2, batch_size: 2, state_every: 1}}
    datasets:
      - name: synth
    transfer:
      protocols: [frozen, linear]
      train_sizes: [4]
      seeds: [0]
      steps: 3
      batch_size: 2
      eval_every: 3
    {executor}
    """
    path = tmp_path / "rayish.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _records(results: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in results.glob("runs/*/record.json")}


def _proc_table() -> dict[int, tuple[str, int, str]]:
    """pid -> (state, ppid, command line) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry.name)] = (fields[0], int(fields[1]), cmd)
    return table


def _ray_processes(session_dir: str) -> set[int]:
    """The Ray node's processes (those naming the session) and their descendants (workers)."""
    table = _proc_table()
    pids = {pid for pid, (_, _, cmd) in table.items() if session_dir in cmd}
    while True:
        more = {pid for pid, (_, ppid, _) in table.items() if ppid in pids} - pids
        if not more:
            return pids
        pids |= more


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    if ray.is_initialized():  # someone else's Ray: used as it is, and not ours to check or stop
        yield None
        return
    # Workers unpickle this module's job functions by name: let them import it.
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    owner = RayExecutor(RaySpec(), out_dir=tmp_path_factory.mktemp("owner"),
                        init_kwargs={"num_cpus": 2, "log_to_driver": False, "runtime_env": {"env_vars": env}})
    owner._connect()
    session = ray._private.worker._global_node.get_session_dir_path()
    yield owner
    gc.collect()  # executors of finished runs release their hold on Ray when collected
    if not Path("/proc").is_dir():  # no way to list processes: just stop Ray
        owner.close()
        return
    pids = _ray_processes(session)
    assert pids, "found none of Ray's processes: the check below would prove nothing"
    owner.close()
    assert not ray.is_initialized()
    alive = {pid: cmd for pid, (state, _, cmd) in _proc_table().items() if pid in pids and state != "Z"}
    assert not alive, f"Ray processes left behind: {alive}"


# The threads each job of the local run has (one worker: this process's cores, bench.executors.local).
THREADS = LocalExecutor(workers=1).threads


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("local")
    out = tmp / "results"
    assert run_manifest(_manifest(tmp), out=out, progress=False, plots=False, workers=1, executor_overrides={"kind": "local"}) == 0
    return out


def test_rewrite_maps_whole_paths_by_prefix_in_nested_kwargs():
    mapping = [("/r/pretrain/depth/ckpt.st", "/t/ckpt.st"), ("/r/data/w", "/t/w"), ("/r/runs/c", "/t/out")]
    kwargs = {"config": {"checkpoint": "/r/pretrain/depth/ckpt.st", "dataset_root": "/r/data/w",
                         "other": ["/r/data/w/frames/0.png", "/r/data/world2", "x/r/data/w", 3, None]},
              "out_dir": Path("/r/runs/c"), "progress": False}
    assert _rewrite(kwargs, sorted(mapping, key=lambda p: -len(p[0]))) == {
        "config": {"checkpoint": "/t/ckpt.st", "dataset_root": "/t/w",
                   "other": ["/t/w/frames/0.png", "/r/data/world2", "x/r/data/w", 3, None]},
        "out_dir": Path("/t/out"), "progress": False}


def test_from_scratch_on_ray_gives_the_local_checkpoint_cells_and_metrics(ray_local, local_run, tmp_path):
    out = tmp_path / "results"
    shutil.copytree(local_run / "data", out / "data")  # rendering the world is not under test
    manifest = _manifest(tmp_path, f"executor: {{kind: ray, resources: {{cpus: {THREADS}}}}}")
    assert run_manifest(manifest, out=out, progress=False, plots=False) == 0
    checkpoint = "pretrain/depth/checkpoint.safetensors"
    assert (out / checkpoint).read_bytes() == (local_run / checkpoint).read_bytes()
    a, b = _records(local_run), _records(out)
    assert len(a) == 4 and sorted(a) == sorted(b)
    for cell, rec in a.items():
        assert b[cell]["status"] == rec["status"] == "ok"
        assert b[cell]["fingerprint"] == rec["fingerprint"]
        assert b[cell]["metrics"] == rec["metrics"]  # same inputs, same seeds: bit for bit


def test_no_shared_fs_pretrains_transfers_and_resumes_through_the_object_store(ray_local, local_run, tmp_path):
    from safetensors.torch import load_file

    # cpus: the threads the local run used, so the pre-training is bit-identical too.
    manifest = _manifest(tmp_path, f"executor: {{kind: ray, resources: {{cpus: {THREADS}}}, ray: {{shared_fs: false}}}}")
    out = tmp_path / "results"
    shutil.copytree(local_run / "data", out / "data")  # rendering the world is not under test
    assert run_manifest(manifest, out=out, progress=False, plots=False) == 0
    ckpt = out / "pretrain" / "depth" / "checkpoint.safetensors"
    ref = load_file(local_run / "pretrain" / "depth" / "checkpoint.safetensors")
    got = load_file(ckpt)
    assert sorted(got) == sorted(ref) and all(got[k].equal(ref[k]) for k in ref)
    assert not (out / "pretrain" / "depth" / "state.pt").exists()  # written and removed on the worker

    a, b = _records(local_run), _records(out)
    assert len(a) == 4 and sorted(a) == sorted(b)
    world = next((out / "data").glob("synth-*"))
    drop = {"fingerprint", "checkpoint_sha256", "checkpoint", "dataset_root"}
    for cell, rec in a.items():
        got = b[cell]
        assert got["status"] == "ok" and got["metrics"] == rec["metrics"]
        assert {k: v for k, v in got["config"].items() if k not in drop} == \
            {k: v for k, v in rec["config"].items() if k not in drop}
        # Paths name the real results folder, not the worker's temp copy.
        assert got["config"]["dataset_root"] == str(world)
        if rec["cell"]["backbone"] == "random":
            assert got["fingerprint"] == rec["fingerprint"] and got["config"]["checkpoint"] is None
        else:
            assert got["config"]["checkpoint"] == got["checkpoint"]["path"] == str(ckpt)
    texts = [p for p in out.rglob("*") if p.is_file() and p.suffix in {".json", ".txt", ".csv", ".md", ".html"}]
    assert texts and not [p for p in texts if "bench-ray-" in p.read_text()]

    # Again: the checkpoint that came back is current, and so is every cell.
    mtime = ckpt.stat().st_mtime_ns
    assert run_manifest(manifest, out=out, progress=False, plots=False) == 0
    assert ckpt.stat().st_mtime_ns == mtime and _records(out) == b


# Module-level, so that Ray workers can unpickle them.
def _transfer_killed_once(config: dict, out_dir: str, progress: bool, attempts: str, kill: bool) -> str:
    """A real transfer cell whose first attempt's worker is SIGKILLed mid-cell: after training,
    at its evaluation (an OOM kill or a lost node look the same to Ray)."""
    import transfer.train

    first = not Path(attempts).exists()
    with open(attempts, "a") as f:
        f.write(f"{os.getpid()}\n")
    if kill and first:
        transfer.train.evaluate = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    return _transfer_job(config, out_dir, progress)


def _always_killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _value(x: int) -> int:
    return x


def test_a_killed_worker_is_retried_by_ray(ray_local, local_run, tmp_path):
    recs = _records(local_run)
    cells = ["random__synth__frozen__monodepth2__n4__s0", "depth__synth__linear__linear__n4__s0"]
    jobs = []
    for k, cell in enumerate(cells):
        config = recs[cell]["config"]
        needs = [Path(p) for p in (config["dataset_root"], config["checkpoint"]) if p]
        out_dir = tmp_path / "results" / "runs" / cell
        # What an earlier attempt left: travels to the worker (the log is appended to), and the
        # unreadable snapshot, which the cell removes, is removed here too.
        out_dir.mkdir(parents=True)
        (out_dir / "log.txt").write_text("earlier attempt\n")
        (out_dir / "state.pt").write_bytes(b"torn")
        jobs.append(Job(_transfer_killed_once, {"config": config, "out_dir": str(out_dir), "progress": False,
                                                "attempts": str(tmp_path / f"attempts{k}"), "kill": k == 1},
                        name=cell, out_dir=out_dir, needs=needs, resources={"cpus": 1}))
    executor = RayExecutor(RaySpec(shared_fs=False, max_retries=1), out_dir=tmp_path / "results")
    assert sorted(executor.run(jobs)) == [(0, "ok", None), (1, "ok", None)]
    attempts = [(tmp_path / f"attempts{k}").read_text().split() for k in range(2)]
    assert len(attempts[0]) == 1 and len(attempts[1]) == 2 and attempts[1][0] != attempts[1][1]
    for cell in cells:
        out_dir = tmp_path / "results" / "runs" / cell
        rec = json.loads((out_dir / "record.json").read_text())
        assert rec["status"] == "ok" and rec["metrics"] == recs[cell]["metrics"]
        assert (out_dir / "log.txt").read_text().startswith("earlier attempt\n")
        assert not (out_dir / "state.pt").exists()

    # Without retries, the death is the job's outcome; the other job is unaffected.
    executor = RayExecutor(RaySpec(max_retries=0), out_dir=tmp_path / "results")
    jobs = [Job(_always_killed, {}, name="dies", out_dir=tmp_path / "dies"),
            Job(_value, {"x": 7}, name="lives", out_dir=tmp_path / "lives")]
    outcomes = sorted(executor.run(jobs), key=lambda o: o[0])
    assert isinstance(outcomes[0][2], ray.exceptions.RayError) and outcomes[0][1] is None
    assert outcomes[1] == (1, 7, None)


def _raises() -> None:
    from bench.core.errors import UserError

    raise UserError("bad input")


def test_job_errors_come_back_as_the_jobs_own_exception(ray_local, tmp_path):
    from bench.core.errors import UserError

    for shared in (True, False):
        executor = RayExecutor(RaySpec(shared_fs=shared), out_dir=tmp_path)
        [(i, result, exc)] = list(executor.run([Job(_raises, {}, name="bad", out_dir=tmp_path / "bad")]))
        assert i == 0 and result is None and type(exc) is UserError and str(exc) == "bad input"
    if ray_local is None:  # a Ray not started here may be a cluster that grows: no such check
        return
    # More than the local instance has would wait forever: one line instead.
    with pytest.raises(UserError, match="asks for 1 GPU"):
        list(executor.run([Job(_value, {"x": 1}, name="big", out_dir=tmp_path / "big", resources={"gpus": 1})]))
