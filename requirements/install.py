"""Install the lock (requirements/lock.txt) into this interpreter's environment with pip, as two pip
processes at once: `make setup` runs it with the new virtual environment's python.

One pip process installs packages one after another, and the lock holds two kinds: a few large CUDA
wheels of torch (unpacking is CPU work) and about 180 small packages (per-package work). Two
processes, one for each kind, finish together in about 40 s on 2 cores, where one took 70 s. Each
is hash-checked (--require-hashes) and installs exactly its lines (--no-deps): together they are the
whole lock, and no package is in both. `--dry-run` prints the two groups instead.

    python requirements/install.py [LOCK] [--dry-run]
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

LOCK = Path(__file__).with_name("lock.txt")
# torch and the CUDA libraries it brings: large wheels, unpacked by one process while the other
# installs everything else.
LARGE = re.compile(r"^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)$")
PIP = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--require-hashes", "--no-deps"]


def entries(text: str) -> list[tuple[str, str]]:
    """(name, the entry's lines) for each pinned requirement of a lock written by `uv pip compile`:
    an entry starts at an unindented line and runs to the next one."""
    found = []
    for block in re.split(r"\n(?=\S)", text):
        if block.strip() and not block.startswith("#"):
            found.append((re.split(r"[=;\s\[]", block, maxsplit=1)[0].lower(), block.rstrip() + "\n"))
    return found


def groups(text: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(torch and the CUDA wheels, the rest)."""
    pinned = entries(text)
    return [e for e in pinned if LARGE.match(e[0])], [e for e in pinned if not LARGE.match(e[0])]


def main(argv: list[str]) -> int:
    dry_run = "--dry-run" in argv
    paths = [a for a in argv if a != "--dry-run"]
    lock = Path(paths[0]) if paths else LOCK
    large, rest = groups(lock.read_text())
    if dry_run:
        for label, group in (("large", large), ("rest", rest)):
            print(f"{label} ({len(group)}): {' '.join(name for name, _ in group)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for label, group in (("large", large), ("rest", rest)):
            part = Path(tmp) / f"{label}.txt"
            part.write_text("".join(block for _, block in group))
            procs.append(subprocess.Popen([*PIP, "-r", str(part)]))
        codes = [p.wait() for p in procs]
    if any(codes):
        print(f"error: installing {lock} failed (pip exit statuses {codes}); run `make setup` again", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
