"""bench.core.claims: exclusive job claims, heartbeats, takeover of dead or stale claims."""

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

import pytest

from bench.core import results_folder as rf
from bench.core import claims
from bench.core.claims import acquire, claimed, read_claim


def _fake_claim(folder, *, host="elsewhere.example", pid=4242, age_s=0.0, token="theirs"):
    folder.mkdir(parents=True, exist_ok=True)
    beat = time.time() - age_s
    info = {"schema": 1, "host": host, "pid": pid, "user": "colleague", "job": "cell x", "token": token,
            "started": "2026-01-01T00:00:00+00:00", "heartbeat": "?", "heartbeat_unix": beat}
    (folder / rf.CLAIM).write_text(json.dumps(info))
    return info


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_claim_is_exclusive_and_says_who_holds_it(tmp_path):
    first = acquire(tmp_path / "job", "cell a", heartbeat=False)
    try:
        assert first.acquired
        info = read_claim(tmp_path / "job")
        assert {info[k] for k in ("host", "pid", "job")} == {os.uname().nodename, os.getpid(), "cell a"}
        assert info["user"] and info["started"] and info["token"] == first.info["token"]
        second = acquire(tmp_path / "job", "cell a", heartbeat=False)  # this process is alive: no takeover
        assert not second.acquired and second.other["token"] == first.info["token"]
    finally:
        first.release()
    assert read_claim(tmp_path / "job") is None
    assert acquire(tmp_path / "job", "cell a", heartbeat=False).acquired  # free again


def test_released_on_exception(tmp_path):
    with pytest.raises(RuntimeError):
        with claimed(tmp_path / "job", "cell a", heartbeat_s=60) as claim:
            assert claim.acquired and (tmp_path / "job" / rf.CLAIM).is_file()
            raise RuntimeError("boom")
    assert not (tmp_path / "job" / rf.CLAIM).exists()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path):
    pid = _dead_pid()
    _fake_claim(tmp_path / "job", host=os.uname().nodename, pid=pid, age_s=1)
    claim = acquire(tmp_path / "job", "cell a", heartbeat=False)
    assert claim.acquired and f"pid {pid}" in claim.took_over and "gone" in claim.took_over
    assert read_claim(tmp_path / "job")["pid"] == os.getpid()


def test_another_hosts_claim_is_taken_over_only_once_its_heartbeat_is_stale(tmp_path):
    _fake_claim(tmp_path / "job", age_s=30)
    held = acquire(tmp_path / "job", "cell a", stale_after_s=60, heartbeat=False)
    assert not held.acquired and held.other["host"] == "elsewhere.example"
    assert read_claim(tmp_path / "job")["token"] == "theirs"  # untouched

    _fake_claim(tmp_path / "job", age_s=90)
    taken = acquire(tmp_path / "job", "cell a", stale_after_s=60, heartbeat=False)
    assert taken.acquired and "heartbeat is 90s old" in taken.took_over
    assert "colleague@elsewhere.example pid 4242" in taken.took_over


def test_an_unreadable_claim_is_taken_over(tmp_path):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / rf.CLAIM).write_text("{not json")
    claim = acquire(tmp_path / "job", "cell a", heartbeat=False)
    assert claim.acquired and "unreadable" in claim.took_over


def test_the_heartbeat_advances_and_notices_a_lost_claim(tmp_path):
    with claimed(tmp_path / "job", "cell a", heartbeat_s=0.05, stale_after_s=1) as claim:
        first = read_claim(tmp_path / "job")["heartbeat_unix"]
        # It beats every 0.05 s: waiting up to 5 s (100 beats) is a guard against a hang, not a timing.
        deadline = time.time() + 5
        while read_claim(tmp_path / "job")["heartbeat_unix"] == first and time.time() < deadline:
            time.sleep(0.02)
        assert read_claim(tmp_path / "job")["heartbeat_unix"] > first
        _fake_claim(tmp_path / "job", token="usurper")  # taken over behind our back
        deadline = time.time() + 5
        while not claim.lost.is_set() and time.time() < deadline:
            time.sleep(0.02)
        assert claim.lost.is_set()
    assert read_claim(tmp_path / "job")["token"] == "usurper"  # release leaves someone else's claim alone


def _race(folder, barrier, results):
    barrier.wait()
    claim = acquire(folder, "cell a", stale_after_s=60, heartbeat=False)
    results.put(claim.acquired)
    barrier.wait()  # the winner stays alive until all have tried: a dead winner's claim is fair game


def _race_for_a_stale_claim(folder, processes: int) -> list:
    """A fresh stale claim in `folder`, raced for by `processes` forked processes at once: what
    each one got (1 for the winner)."""
    ctx = mp.get_context("fork")
    _fake_claim(folder, age_s=3600)
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(folder, barrier, results)) for _ in range(processes)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join()
    return outcomes


def test_two_drivers_taking_over_one_stale_claim_only_one_wins(tmp_path):
    for _ in range(5):  # each round a fresh stale claim raced for by 6 processes at once
        outcomes = _race_for_a_stale_claim(tmp_path / "job", 6)
        assert sum(outcomes) == 1, outcomes


def test_without_the_takeover_lock_the_race_is_lost(tmp_path, monkeypatch):
    """Fault injection: with the flock made a no-op, racing takeovers do produce several winners
    (so the test above really exercises the lock)."""
    import contextlib

    monkeypatch.setattr(claims, "exclusive_lock", lambda path: contextlib.nullcontext())
    slow_read = claims.read_claim

    def read_then_pause(folder):
        info = slow_read(folder)
        time.sleep(0.05)  # widen the check-then-act window the lock closes
        return info

    monkeypatch.setattr(claims, "read_claim", read_then_pause)
    assert sum(_race_for_a_stale_claim(tmp_path / "job", 4)) > 1


def test_claim_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o002)
    try:
        claim = acquire(tmp_path / "job", "cell a", heartbeat=False)
        assert (tmp_path / "job" / rf.CLAIM).stat().st_mode & 0o777 == 0o664
        claim.release()
    finally:
        os.umask(old)


def test_a_requeued_slurm_job_takes_over_its_own_earlier_claim(tmp_path, monkeypatch):
    info = _fake_claim(tmp_path / "job", age_s=5)  # another node, heartbeat fresh
    info["slurm_job"] = "777"
    (tmp_path / "job" / rf.CLAIM).write_text(json.dumps(info))
    monkeypatch.setenv("SLURM_JOB_ID", "778")  # another job: a live claim
    assert not acquire(tmp_path / "job", "cell a", heartbeat=False).acquired
    monkeypatch.setenv("SLURM_JOB_ID", "777")  # the same job, requeued after a preemption
    claim = acquire(tmp_path / "job", "cell a", heartbeat=False)
    assert claim.acquired and "Slurm job 777 (requeued)" in claim.took_over
    assert read_claim(tmp_path / "job")["slurm_job"] == "777"


def test_acquiring_a_folder_removes_a_killed_publishers_temp_claim(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    debris = folder / f".{rf.CLAIM}.dead1234.tmp"
    debris.write_text('{"half": ')
    holder = acquire(folder, "cell a", heartbeat=False)
    try:
        assert holder.acquired and not debris.exists()
        debris.write_text('{"half": ')  # while the folder is held, another driver's acquire leaves it alone
        assert not acquire(folder, "cell a", heartbeat=False).acquired and debris.exists()
    finally:
        holder.release()


def test_without_a_working_flock_a_temp_claim_is_left_alone(tmp_path, monkeypatch):
    """Where flock is missing, a temp claim may be a live driver's about to be linked: kept."""
    import contextlib

    monkeypatch.setattr(claims, "exclusive_lock", lambda path: contextlib.nullcontext(False))
    folder = tmp_path / "job"
    folder.mkdir()
    other = folder / f".{rf.CLAIM}.live1234.tmp"
    other.write_text("{}")
    claim = acquire(folder, "cell a", heartbeat=False)
    assert claim.acquired and other.exists()
    claim.release()
