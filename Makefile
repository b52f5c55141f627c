# The two commands a fresh clone needs: `make quickstart` and `make test`.
# Both create the virtual environment on first use (pip install -e ".[$(EXTRAS)]").
# CI adds the optional extras: `make test EXTRAS=dev,mmseg,ray,slurm,track` (.ci/run).

PYTHON ?= python3
VENV   ?= .venv
EXTRAS ?= dev
BIN    := $(VENV)/bin
comma  := ,
# One stamp per extras set: asking for more extras installs them, the same set again is a no-op.
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: quickstart quickstart-encoder test setup clean-results

quickstart: $(STAMP)
	$(BIN)/bench run configs/quickstart.yaml

# The quickstart's checkpoints with a fresh decoder for everyone (run `make quickstart` first).
quickstart-encoder: $(STAMP)
	$(BIN)/bench run configs/quickstart_encoder.yaml

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
	rm -rf results/quickstart results/quickstart_encoder
