"""The harness version, recorded in every checkpoint and run record, and, when the harness runs
from a git checkout, the commit it runs and whether tracked files differ from it."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

__version__ = "0.1.0"

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding bench/, pretrain/, transfer/
_THIS_FILE = Path(__file__).resolve().relative_to(PACKAGE_ROOT)  # bench/core/version.py
GIT_TIMEOUT_S = 5.0  # a hung filesystem or git must not hold up a run


def git_checkout(root: Path, marker: Path = _THIS_FILE) -> dict | None:
    """`{"commit": SHA, "dirty": bool}` of the git checkout `root` is the top of, or None when it
    is none (an installed package, an sdist, git missing or too slow). `marker` must be a file of
    that checkout, so that a harness installed inside someone else's repository reports None
    rather than that repository's commit. `dirty`: a tracked file differs from the commit
    (untracked files, such as results folders, do not count)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  timeout=GIT_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != Path(root).resolve() or not (Path(top) / marker).is_file():
        return None
    commit, changes = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    if commit is None or changes is None:
        return None
    return {"commit": commit, "dirty": bool(changes)}


@functools.lru_cache(maxsize=1)
def _harness_checkout() -> dict | None:
    return git_checkout(PACKAGE_ROOT)


def harness_checkout() -> dict | None:
    """`git_checkout` of the harness itself, computed once per process (a copy: callers may edit it)."""
    found = _harness_checkout()
    return None if found is None else dict(found)


# The libraries whose versions decide a result's numbers (kernels, initialisations, model
# definitions): every record and pre-training summary carries them, outside the fingerprints.
VERSIONED_LIBRARIES = ("torch", "torchvision", "timm")


@functools.lru_cache(maxsize=1)
def _library_versions() -> dict:
    import torch  # its build tag (+cu130, +cpu) is part of what ran; the distribution's metadata drops it

    versions = {"harness": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for name in VERSIONED_LIBRARIES[1:]:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def library_versions() -> dict:
    """`{harness, python, torch, torchvision, timm}` of this process (a copy: callers may edit it)."""
    return dict(_library_versions())
