# The two commands a fresh clone needs: `make quickstart` and `make test`.
# Both create the virtual environment on first use, from the committed lock (requirements/lock.txt):
# every dependency of every extra, pinned with hashes, so that two set-ups a month apart run the same
# libraries. `make lock` regenerates the lock from pyproject.toml's ranges.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LOCK   := requirements/lock.txt
# The stamp marks a complete install of this lock; a changed lock installs again.
STAMP  := $(VENV)/.installed-lock
# The resolver `make lock` runs, pinned so that the same inputs give the same lock.
UV     := uv==0.13.10
# Two processes, one torch thread each: the suite's fastest setting on 2 cores (docs/testing.md).
PYTEST_WORKERS ?= 2

# Modules are byte-compiled on first import, not at install (pip --no-compile), so Python must be
# allowed to write them: where PYTHONDONTWRITEBYTECODE is set, every process (the suite starts
# hundreds: workers, ranks, drivers) would compile torch and the rest from source again, about 1.5 s
# of CPU each, and the suite took 1.5x as long.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: quickstart quickstart-encoder test setup lock clean-results

quickstart: $(STAMP)
	$(BIN)/bench run configs/quickstart.yaml

# The quickstart's checkpoints with a fresh decoder for everyone (run `make quickstart` first).
quickstart-encoder: $(STAMP)
	$(BIN)/bench run configs/quickstart_encoder.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --durations=30

setup: $(STAMP)

# pip, hash-checked and without dependency resolution: the lock is the whole environment, installed
# by two pip processes at once (requirements/install.py: torch's CUDA wheels, and the rest). The
# project itself goes in editable, built by the locked setuptools (no isolated build environment,
# which would fetch whatever setuptools is newest). --no-compile: modules compile on first import.
$(STAMP): $(LOCK) requirements/install.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python requirements/install.py $(LOCK)
	$(BIN)/python -m pip install --quiet --no-compile --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Resolve pyproject.toml (every extra) and its build requirements for every platform and every
# Python it supports, under requirements/pins.txt; versions already in the lock are kept where they
# still fit (`make lock UPGRADE=1` takes the newest allowed instead).
lock:
	$(PYTHON) -m venv .lock-tools
	.lock-tools/bin/python -m pip install --quiet "$(UV)"
	.lock-tools/bin/uv pip compile pyproject.toml requirements/build.in --all-extras --universal \
		--python-version 3.10 --generate-hashes --constraint requirements/pins.txt \
		--custom-compile-command "make lock" $(if $(UPGRADE),--upgrade) --output-file $(LOCK)

clean-results:
	rm -rf results/quickstart results/quickstart_encoder
