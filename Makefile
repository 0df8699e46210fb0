# labkit: `make lab` for attendees, `make test` for developers and CI, `make run` for instructors.
# Every target sets up what it needs first, so each one works on a fresh clone. Set-up installs
# exactly what lock/ says (see lock/README.md); `make lock` renews it, `make canary` tries what
# the next lock would hold.

# The Python to make .venv with; when it is not 3.10-3.12, the newest python3.1x on PATH is used.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Which lock: cpu (Linux without an NVIDIA GPU: torch's CPU build), cuda (PyPI's torch: the CUDA
# build on Linux, the normal build on macOS), or auto (cuda where nvidia-smi exists or on macOS).
TORCH ?= auto
# uv (default: faster, see docs/benchmarks.md) or pip; both install the same hash-checked lock.
INSTALLER ?= uv
# cpu or gpu; empty means "gpu if a CUDA device is visible, else cpu".
PROFILE ?=
# Non-empty runs the notebooks with small settings (what CI does).
SMOKE ?=
# zh (中文) or en: the labs' language for `make lab` / `make run`; empty: lab shows both folders, run runs en.
LAB_LANG ?=
# Extra arguments for `jupyter lab`, e.g. LAB_ARGS="--no-browser --ServerApp.port=8899".
LAB_ARGS ?=
# A file to write the seconds of each set-up step to (benchmarks/bench_setup.py uses it).
SETUP_TIMINGS ?=
# The drift canary's torch: locked (everything else newest) or latest (torch's newest too).
CANARY_TORCH ?= locked
CANARY_VENV ?= .venv-canary

profile_flag = $(if $(PROFILE),--profile $(PROFILE))
setup_env = -m labkit.setup_env

# checkov (manifest and Terraform checks) conflicts with the kit's dependencies: own virtualenv, own lock.
CHECKOV_VENV ?= .venv-checkov

.PHONY: setup sync models lab test run bench lint checkov lock lock-refresh canary clean slides slide-tools site room-ready rehearse

setup: $(VENV)/.labkit-installed

$(VENV)/.labkit-installed: pyproject.toml uv.lock lock/cpu.txt lock/cuda.txt
	$(PYTHON) $(setup_env) install --venv $(VENV) --variant $(TORCH) --installer $(INSTALLER) --python $(PYTHON) \
		$(if $(SETUP_TIMINGS),--timings $(SETUP_TIMINGS))
	touch $@

# Install the lock again whatever the stamp says (after switching TORCH=cpu/cuda, or to undo drift).
sync:
	rm -f $(VENV)/.labkit-installed
	$(MAKE) setup

models: setup
	$(BIN)/labkit models pull $(profile_flag)

lab: models
	-$(BIN)/labkit doctor $(profile_flag) $(if $(LAB_LANG),--lang $(LAB_LANG))
	@if [ "$$(id -u)" = 0 ]; then echo "labkit: running as root, so JupyterLab gets --allow-root (fine in a container or a rented VM; on a shared machine use a normal account)"; fi
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.root_dir=notebooks$(if $(LAB_LANG),/$(LAB_LANG)) \
		$(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

checkov: $(CHECKOV_VENV)/.installed

$(CHECKOV_VENV)/.installed: lock/checkov.txt | setup
	$(BIN)/python $(setup_env) tool --venv $(CHECKOV_VENV) --lock lock/checkov.txt
	touch $@

# The decks' tools from npm (Marp, Mermaid's CLI, the Noto Sans SC web font), exactly as
# slides/package-lock.json pins them; Chromium (Debian: apt-get install chromium) draws the PDFs.
slides/node_modules/.installed: slides/package.json slides/package-lock.json
	cd slides && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund
	touch $@

slide-tools:
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory slides/node_modules/.installed; \
	else echo "labkit: no npm here, so the decks cannot be built (their tests skip): install Node.js 18 or newer"; fi

# Every deck in both languages: build/slides/<en|zh>/<deck>.html and .pdf
slides: setup slide-tools
	$(BIN)/labkit slides build

# The course site in build/site: the agenda, every deck, the labs read-only (with the outputs the
# last test run left in build/notebooks), the guides and the benchmarks. Works from file://.
site: slides
	$(BIN)/labkit site build

test: models checkov slide-tools
	$(BIN)/ruff check .
	LABKIT_CHECKOV=$(CHECKOV_VENV)/bin/checkov $(BIN)/pytest

run: models
	$(BIN)/labkit run-notebooks $(profile_flag) $(if $(SMOKE),--smoke) $(if $(LAB_LANG),--lang $(LAB_LANG)) \
		--output-dir runs/notebooks$(if $(LAB_LANG),/$(LAB_LANG))

bench: models
	$(BIN)/python benchmarks/bench_foundation.py
	$(BIN)/python benchmarks/bench_batch.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_generate.py

lint: setup
	$(BIN)/ruff check .

# Renew the lock: the newest releases pyproject's ranges allow (torch stays at pyproject's
# [tool.uv] constraint), exported to lock/*.txt; PACKAGES="transformers diffusers" renews only
# those. Review the diff, run `make test`, commit.
lock: setup
	$(BIN)/python $(setup_env) lock $(if $(PACKAGES),$(foreach p,$(PACKAGES),--upgrade-package $(p)),--upgrade)

# Re-resolve after editing pyproject.toml, keeping every pin that still fits.
lock-refresh: setup
	$(BIN)/python $(setup_env) lock

# The drift canary: a fresh virtualenv with the newest versions the ranges allow, then the suite.
# Red here means the next `make lock` would break something: fix it before the event.
canary: models checkov
	$(PYTHON) $(setup_env) canary --venv $(CANARY_VENV) --torch $(CANARY_TORCH)
	$(CANARY_VENV)/bin/ruff check .
	LABKIT_CANARY=1 LABKIT_CHECKOV=$(CHECKOV_VENV)/bin/checkov $(CANARY_VENV)/bin/pytest

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) $(CANARY_VENV) runs .pytest_cache .ruff_cache *.egg-info

# The day of the workshop: is the room's cluster ready for the doors to open? (KUBECONFIG: the
# room's; ATTENDEES: the head-count.) Exit 0 when every item is ready.
ATTENDEES ?=
room-ready: setup
	$(BIN)/labkit room ready $(if $(ATTENDEES),--attendees $(ATTENDEES)) $(if $(LAB_LANG),--lang $(LAB_LANG))

# The existing-cluster env rehearsed offline for your inputs (TFVARS, default: its example): every
# validation, and the hub values, KubeRay values and RayCluster it would install, in build/rehearsal.
TFVARS ?=
rehearse: setup
	$(BIN)/python infra/terraform/rehearse.py $(TFVARS)
