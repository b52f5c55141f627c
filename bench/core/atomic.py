"""Atomic file writes: a temp file in the target's folder, fsync, then rename over the target.

A crash at any moment leaves either the old file or the new one, never a torn one; this is what
lets `kill -9` and re-run be safe for records, checkpoints, snapshots and leaderboards.

Permissions. `tempfile.mkstemp` creates its file 0600 whatever the umask (a temp file is private
by design), and the rename keeps that mode, so every atomically written file used to be readable
by its owner alone: colleagues sharing a results folder, and a web server publishing the
leaderboard, could not read it. The temp file is therefore chmod-ed to what `open()` would give
an ordinary new file: 0666 masked by the process umask (0644 under 022, 0664 under 002), before
any byte is written to it.

Reading the umask. The only way to read it is `os.umask(x)`, which also sets it; a thread creating
a file between that call and the restoring one would get mode x. So it is read under a lock (all
readers here are serialised) and set to its own current value at once (`os.umask(0o022)` then
straight back), and per write rather than once at import, so a program that changes its umask
later (a test, a server) is honoured. Other threads' own file creations can still race with that
window of two syscalls; where that matters, `/proc/self/status` gives the umask read-only (Linux
>= 4.7), and it is used first when present.
"""

from __future__ import annotations

import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, without changing it where the kernel can tell (see the module doc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def ordinary_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file here: 0666 less the umask."""
    return 0o666 & ~current_umask()


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces `path`, on failure it is removed.
    The file that lands has the mode an ordinary new file would have (not mkstemp's 0600);
    a writer that wants another mode chmods the yielded path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = ordinary_file_mode()  # first: the temp file's lifetime (what a kill -9 can leave) stays short
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        inode = os.fstat(fd).st_ino
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            # A writer that replaced the file instead of writing into it (safetensors' save_file
            # writes its own temp file and renames it over ours, 0600 again) gets the mode too.
            if os.fstat(f.fileno()).st_ino != inode:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_temp_files(folder, *, skip_dirs=(), keep_prefixes=()) -> list[Path]:
    """Remove the temp files `atomic_path` leaves when its process is killed between creating and
    renaming one (`.NAME.RANDOM.tmp`), in `folder` and its subfolders (but not `skip_dirs`, names
    of subfolders another program writes); names starting with one of `keep_prefixes` stay.
    Only for a folder the caller owns (it holds the folder's claim or lock): a live writer's temp
    file would go too. Returns what was removed."""
    folder, removed = Path(folder), []
    for path in sorted(folder.rglob(".*.tmp")):
        inside = path.relative_to(folder).parts
        if not path.is_file() or inside[0] in skip_dirs or path.name.startswith(tuple(keep_prefixes)):
            continue
        try:
            path.unlink()
        except FileNotFoundError:  # removed meanwhile
            continue
        removed.append(path)
    return removed


def write_bytes_atomic(path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())
