# The two commands a fresh clone needs: `make quickstart` and `make test`.
# Both create the virtual environment on first use (pip install -e ".[$(EXTRAS)]").
# CI adds the optional extras: `make test EXTRAS=dev,mmseg,ray,slurm` (.ci/run).

PYTHON ?= python3
VENV   ?= .venv
EXTRAS ?= dev
BIN    := $(VENV)/bin
comma  := ,
# One stamp per extras set: asking for more extras installs them, the same set again is a no-op.
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: quickstart test setup clean-results

quickstart: $(STAMP)
	$(BIN)/bench run configs/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest

setup: $(STAMP)

# Re-install when the dependencies change; the stamp marks a complete install.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

clean-results:
	rm -rf results/quickstart
