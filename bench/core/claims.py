"""Claims: one driver at a time per pre-training and per transfer cell of a shared results folder.

A job's output folder holds `claim.json` while a process works in it: host, pid, user, the job,
when it started and a heartbeat that a background thread refreshes every `heartbeat_s`. Another
driver that finds a live claim skips the job ("claimed elsewhere"); one that finds a dead claim
takes it over:

- same host: the holder's pid is gone (a `kill -9`, an OOM kill, a reboot), or its heartbeat is
  older than `stale_after_s` (a pid reused by an unrelated process stops beating);
- another host: its heartbeat is older than `stale_after_s` (a pid means nothing there);
- it was taken by an earlier run of this same Slurm job (a preempted job requeued, maybe on
  another node, keeps its job id).

Exclusivity. Every check-and-set on a claim (create, take over, beat, release) runs under an
exclusive `flock` of the folder's `.claim.lock`, held for milliseconds, so two drivers taking over
the same stale claim cannot both win: the second one, once it gets the lock, reads the first
one's fresh claim and backs off. The lock dies with its process, so a killed driver never leaves
it held. On top of that a new claim is published with `link(2)` from a complete temp file, which
fails when the name exists: readers never see a half-written claim, and creation stays exclusive
even where `flock` is unavailable (then a warning says that only takeovers lose their guard).
On Linux NFS `flock` is carried out with NFS byte-range locks, so this holds across hosts of an
NFSv4 (or NFSv3 with lockd) mount; the heartbeat rule is what covers a host that dies holding
a claim (its lock is recovered by the server, its claim goes stale).

Heartbeats compare the writer's and the reader's wall clocks: keep the hosts' clocks in NTP sync
and `stale_after_s` many heartbeats long (the manifest enforces at least 3).

The same module gives `exclusive_lock(path)`, a blocking flock for short critical sections
(writing the leaderboard, rendering a shared world).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import getpass
import json
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from bench.core import results_folder as rf
from bench.core.atomic import ordinary_file_mode

CLAIMED = "claimed elsewhere"  # a job's result when another live driver holds its folder
DEFAULT_HEARTBEAT_S = 30.0
DEFAULT_STALE_AFTER_S = 600.0
_warned_no_flock = False


def identity() -> dict:
    """Who this process is, as a claim and a record say it: host, pid, user."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = str(os.getuid())
    return {"host": socket.gethostname(), "pid": os.getpid(), "user": user}


def _slurm_job() -> str | None:
    """This process's Slurm job id: kept when Slurm requeues a preempted job, on any node."""
    return os.environ.get("SLURM_JOB_ID")


def _now_iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="seconds")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except (ValueError, TypeError, OverflowError):
        return False
    return True


def staleness(info: dict, stale_after_s: float, now: float | None = None) -> str | None:
    """Why the claim `info` may be taken over, or None while its holder looks alive."""
    now = time.time() if now is None else now
    try:
        age = now - float(info["heartbeat_unix"])
    except (KeyError, TypeError, ValueError):
        return "its claim file is unreadable"
    if info.get("host") == socket.gethostname() and not pid_alive(info.get("pid")):
        return f"pid {info.get('pid')} on {info.get('host')} is gone"
    if info.get("slurm_job") and info.get("slurm_job") == _slurm_job() and info.get("pid") != os.getpid():
        # A preempted job killed before it could release, now requeued (maybe on another node):
        # the same Slurm job, so the claim is this job's own and waiting out its heartbeat is pointless.
        return f"it is an earlier run of this Slurm job {info['slurm_job']} (requeued)"
    if age > stale_after_s:
        return f"its heartbeat is {age:.0f}s old (stale after {stale_after_s:.0f}s)"
    return None


def holder(info: dict) -> str:
    """`user@host pid N` of a claim, for one-line messages."""
    return f"{info.get('user', '?')}@{info.get('host', '?')} pid {info.get('pid', '?')}"


def read_claim(folder) -> dict | None:
    """The claim in `folder`: None when there is none; {} when the file is unreadable (junk)."""
    try:
        text = (Path(folder) / rf.CLAIM).read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


@contextlib.contextmanager
def exclusive_lock(path) -> Iterator[bool]:
    """Hold an exclusive flock on `path` (created if missing) for the block; blocks until free.
    Yields True when locked; without flock support (some network filesystems) False: the block
    runs unguarded, with a warning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, ordinary_file_mode())
    locked = True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            global _warned_no_flock
            if not _warned_no_flock:
                _warned_no_flock = True
                print(f"warning: {path.parent}: this filesystem has no flock ({exc.strerror}); claims are "
                      f"created exclusively but stale takeovers and leaderboard writes are not serialised",
                      file=sys.stderr)
            locked = False
        yield locked
    finally:
        os.close(fd)  # releases the lock


def _publish(folder: Path, info: dict, *, replace: bool) -> bool:
    """Write `info` as the folder's claim from a complete temp file: link (fails if a claim
    exists: False) or, for a takeover, replace. True when it is in place."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{rf.CLAIM}.", suffix=".tmp")
    try:
        os.fchmod(fd, ordinary_file_mode())
        with os.fdopen(fd, "w") as f:
            json.dump(info, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, folder / rf.CLAIM)
            return True
        try:
            os.link(tmp, folder / rf.CLAIM)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@dataclass
class Claim:
    """The outcome of `acquire`: ours (`acquired`), or the live `other` that holds the folder."""

    folder: Path
    job: str
    acquired: bool
    info: dict = field(default_factory=dict)  # ours, when acquired
    other: dict | None = None  # the live holder's claim, when not
    took_over: str | None = None  # why the previous claim was stale, when we took it over
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    lost: threading.Event = field(default_factory=threading.Event)  # someone took it from us
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _ours(self, info: dict | None) -> bool:
        return bool(info) and info.get("token") == self.info.get("token")

    def beat(self) -> bool:
        """Refresh the heartbeat; False (and `lost` set) when the claim is no longer ours."""
        with exclusive_lock(self.folder / rf.CLAIM_MUTEX):
            if not self._ours(read_claim(self.folder)):
                self.lost.set()
                return False
            now = time.time()
            self.info = {**self.info, "heartbeat": _now_iso(now), "heartbeat_unix": now}
            _publish(self.folder, self.info, replace=True)
        return True

    def _beat_forever(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self.beat():
                    print(f"warning: {self.folder}: claim taken over by another driver while {self.job} runs",
                          file=sys.stderr)
                    return
            except OSError as exc:  # a filesystem hiccup: try again at the next beat
                print(f"warning: {self.folder}: heartbeat failed: {exc}", file=sys.stderr)

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat_forever, name=f"claim-heartbeat {self.job}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and remove the claim, if it is still ours."""
        if not self.acquired:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with exclusive_lock(self.folder / rf.CLAIM_MUTEX):
            if self._ours(read_claim(self.folder)):
                (self.folder / rf.CLAIM).unlink(missing_ok=True)
        self.acquired = False


def acquire(folder, job: str, *, heartbeat_s: float = DEFAULT_HEARTBEAT_S,
            stale_after_s: float = DEFAULT_STALE_AFTER_S, heartbeat: bool = True) -> Claim:
    """Claim `folder` for `job` (a description such as "cell <id>"): ours when free or stale,
    else a Claim with `acquired=False` naming the live holder. Starts the heartbeat thread."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    info = {"schema": 1, **identity(), "job": job, "started": _now_iso(now), "heartbeat": _now_iso(now),
            "heartbeat_unix": now, "token": uuid.uuid4().hex}
    if _slurm_job():
        info["slurm_job"] = _slurm_job()
    claim = Claim(folder, job, acquired=False, info=info, heartbeat_s=heartbeat_s)
    with exclusive_lock(folder / rf.CLAIM_MUTEX) as locked:
        current = read_claim(folder)
        if current is not None:
            why = staleness(current, stale_after_s)
            if why is None:
                claim.other = current
                return claim
            claim.took_over = f"took over the claim of {holder(current)}: {why}"
            _publish(folder, info, replace=True)
        elif not _publish(folder, info, replace=False):  # created meanwhile, outside a working flock
            claim.other = read_claim(folder) or {}
            return claim
        # A driver killed while publishing a claim left its temp file. Every publish runs under this
        # lock, so while we really hold it any such file is a dead process's (without flock it may be
        # a live one's, about to be linked: left alone).
        for debris in folder.glob(f".{rf.CLAIM}.*.tmp") if locked else ():
            with contextlib.suppress(FileNotFoundError):
                debris.unlink()
    claim.acquired = True
    if heartbeat:
        claim.start_heartbeat()
    return claim


@contextlib.contextmanager
def claimed(folder, job: str, **policy) -> Iterator[Claim]:
    """`acquire` for the block; released however the block ends (return, exception, Ctrl-C)."""
    claim = acquire(folder, job, **policy)
    try:
        yield claim
    finally:
        claim.release()


def claims_under(results_dir) -> list[tuple[Path, dict]]:
    """Every claim file of a results folder's pre-trainings and cells: (folder, claim)."""
    root = Path(results_dir)
    found = []
    for pattern in (f"{rf.PRETRAIN}/*/{rf.CLAIM}", f"{rf.RUNS}/*/{rf.CLAIM}"):
        for path in sorted(root.glob(pattern)):
            info = read_claim(path.parent)
            if info is not None:
                found.append((path.parent, info))
    return found
