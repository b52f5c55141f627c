# The two commands a fresh clone needs: `make quickstart` and `make test`.
# Both create the virtual environment on first use (pip install -e ".[dev]").

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

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
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

clean-results:
	rm -rf results/quickstart
