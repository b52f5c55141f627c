"""The harness's git commit and dirty flag, in a checkout and outside one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bench.core.version import PACKAGE_ROOT, _THIS_FILE, git_checkout, harness_checkout

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A git repository holding a copy of the harness's marker file, committed."""
    repo = tmp_path / "harness"
    (repo / _THIS_FILE).parent.mkdir(parents=True)
    shutil.copy(PACKAGE_ROOT / _THIS_FILE, repo / _THIS_FILE)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "harness")
    return repo


def test_a_checkout_gives_its_commit_and_turns_dirty_when_a_tracked_file_changes(checkout):
    clean = git_checkout(checkout)
    assert clean == {"commit": _git(checkout, "rev-parse", "HEAD"), "dirty": False}
    (checkout / "results").mkdir()
    (checkout / "results" / "record.json").write_text("{}")  # untracked output: still clean
    assert git_checkout(checkout)["dirty"] is False
    (checkout / _THIS_FILE).write_text("# edited\n")
    assert git_checkout(checkout) == {"commit": clean["commit"], "dirty": True}


def test_outside_a_checkout_there_is_no_commit(tmp_path, checkout):
    plain = tmp_path / "installed"
    (plain / _THIS_FILE).parent.mkdir(parents=True)
    shutil.copy(PACKAGE_ROOT / _THIS_FILE, plain / _THIS_FILE)
    assert git_checkout(plain) is None
    # The harness installed inside another repository: that repository's commit is not the harness's.
    nested = checkout / "vendor" / "harness"
    (nested / _THIS_FILE).parent.mkdir(parents=True)
    shutil.copy(PACKAGE_ROOT / _THIS_FILE, nested / _THIS_FILE)
    assert git_checkout(nested) is None
    assert git_checkout(tmp_path / "nowhere") is None


def test_the_harness_reports_the_checkout_it_runs_from():
    top = subprocess.run(["git", "-C", str(PACKAGE_ROOT), "rev-parse", "--show-toplevel"], capture_output=True,
                         text=True)
    if top.returncode != 0:
        assert harness_checkout() is None
        return
    found = harness_checkout()
    assert found["commit"] == subprocess.run(["git", "-C", str(PACKAGE_ROOT), "rev-parse", "HEAD"],
                                             capture_output=True, text=True).stdout.strip()
    found["commit"] = "edited"  # callers get a copy
    assert harness_checkout()["commit"] != "edited"


def test_library_versions_name_the_libraries_that_decide_the_numbers():
    from importlib import metadata

    import torch

    from bench.core.version import __version__, library_versions

    versions = library_versions()
    assert versions["torch"] == torch.__version__ and versions["harness"] == __version__
    assert versions["torchvision"] == metadata.version("torchvision") and versions["timm"] == metadata.version("timm")
    versions["torch"] = "edited"  # a copy
    assert library_versions()["torch"] == torch.__version__

