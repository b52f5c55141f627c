"""The committed lock (requirements/lock.txt, `make lock`): it pins, with hashes, a version of every
dependency of every extra that pyproject.toml's ranges allow, names no machine-local path, and is
what the environment running the suite holds (checked where the set-up promises it: `.ci/run`)."""

from __future__ import annotations

import os
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover -- Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _entries(text: str) -> list[dict]:
    """The lock's entries: name, version, marker (None: every environment) and hashes."""
    joined = re.sub(r"\\\n", " ", text)  # one logical line per entry
    out = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        spec, _, rest = line.partition(" --hash=")
        requirement, _, marker = spec.partition(";")
        name, _, version = requirement.strip().partition("==")
        out.append({"name": canonicalize_name(name), "version": version.strip(), "line": line,
                    "marker": Marker(marker.strip()) if marker.strip() else None,
                    "hashes": re.findall(r"--hash=sha256:([0-9a-f]{64})", line)})
    return out


ENTRIES = _entries(LOCK.read_text())


def _pins_here() -> dict[str, str]:
    """name -> version that the lock installs in this environment (markers evaluated here)."""
    return {e["name"]: e["version"] for e in ENTRIES if e["marker"] is None or e["marker"].evaluate()}


def _project_requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in [*project["dependencies"], *extras, *PYPROJECT["build-system"]["requires"]]]


def test_every_entry_is_an_exact_pin_with_hashes_and_no_local_path():
    assert len(ENTRIES) > 50
    for e in ENTRIES:
        assert e["version"] and e["hashes"], e["line"][:120]
    text = LOCK.read_text()
    for local in ("file:", "/opt/", "/tmp/", "/home/", "/root/", "--find-links", "--index-url", "--extra-index-url"):
        assert local not in text, f"the lock names a machine-local source: {local}"


def test_the_lock_satisfies_every_range_of_the_project_and_its_build():
    pins = _pins_here()
    for requirement in _project_requirements():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement}: not in requirements/lock.txt; run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            f"{requirement}: the lock pins {pins[name]}; run `make lock`"


def test_the_lock_input_of_the_build_is_pyprojects_build_system():
    listed = [line.strip() for line in (ROOT / "requirements" / "build.in").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert sorted(listed) == sorted(PYPROJECT["build-system"]["requires"])


@pytest.mark.skipif(not os.environ.get("BENCH_REQUIRE_LOCK"),
                    reason="set BENCH_REQUIRE_LOCK=1 where the environment was installed from the lock (.ci/run)")
def test_the_environment_is_the_lock():
    differ = []
    for name, version in sorted(_pins_here().items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            differ.append(f"{name}: locked {version}, not installed")
            continue
        if installed.split("+")[0] != version.split("+")[0]:
            differ.append(f"{name}: locked {version}, installed {installed}")
    assert not differ, "; ".join(differ)


def test_the_parallel_install_splits_the_lock_into_two_parts_that_are_the_whole_of_it():
    import importlib.util

    spec = importlib.util.spec_from_file_location("install_lock", ROOT / "requirements" / "install.py")
    install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install)
    large, rest = install.groups(LOCK.read_text())
    names = lambda group: [canonicalize_name(name) for name, _ in group]  # noqa: E731
    assert sorted(names(large) + names(rest)) == sorted(e["name"] for e in ENTRIES)  # each entry exactly once
    assert not set(names(large)) & set(names(rest))  # a package's entries (one per marker) stay together
    assert {"torch", "triton", "nvidia-cudnn-cu13"} <= set(names(large)) and "torchvision" in names(rest)
    # each part is still a hash-checked requirements file
    assert sorted(e["line"] for e in _entries("".join(block for _, block in large + rest))) == \
        sorted(e["line"] for e in ENTRIES)
