# labkit: `make lab` for attendees, `make test` for developers and CI, `make run` for instructors.
# Every target sets up what it needs first, so each one works on a fresh clone.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch the labs are tested with. GPU machines: see README ("GPU machines").
TORCH_SPEC ?= torch==2.13.0
# Optional extra index for torch (e.g. PyTorch's CPU-only or a specific CUDA wheel index).
TORCH_INDEX_URL ?=
# cpu or gpu; empty means "gpu if a CUDA device is visible, else cpu".
PROFILE ?=
# Non-empty runs the notebooks with small settings (what CI does).
SMOKE ?=

profile_flag = $(if $(PROFILE),--profile $(PROFILE))

# checkov (manifest and Terraform checks) conflicts with the kit's dependencies: own virtualenv.
CHECKOV_VENV ?= .venv-checkov
CHECKOV_SPEC ?= checkov==3.3.30

.PHONY: setup models lab test run bench lint checkov clean

setup: $(VENV)/.labkit-installed

$(VENV)/.labkit-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install "$(TORCH_SPEC)" $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL))
	$(BIN)/python -m pip install -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name labkit --display-name "Python (labkit)"
	touch $@

models: setup
	$(BIN)/labkit models pull $(profile_flag)

lab: models
	-$(BIN)/labkit doctor $(profile_flag)
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.root_dir=notebooks

checkov: $(CHECKOV_VENV)/.installed

$(CHECKOV_VENV)/.installed:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet "$(CHECKOV_SPEC)"
	touch $@

test: models checkov
	$(BIN)/ruff check .
	LABKIT_CHECKOV=$(CHECKOV_VENV)/bin/checkov $(BIN)/pytest

run: models
	$(BIN)/labkit run-notebooks $(profile_flag) $(if $(SMOKE),--smoke) --output-dir runs/notebooks

bench: models
	$(BIN)/python benchmarks/bench_foundation.py
	$(BIN)/python benchmarks/bench_batch.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_generate.py

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) runs .pytest_cache .ruff_cache *.egg-info
