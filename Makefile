# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN     = $(VENV)/bin
CONSTRAINTS = requirements/constraints.txt
PIP     = $(BIN)/pip install -q -c $(CONSTRAINTS)
CORE    = $(VENV)/.medcls-core
FULL    = $(VENV)/.medcls-all
SHARED ?= ../shared/data/medmnist
export NO_ALBUMENTATIONS_UPDATE = 1

.PHONY: install install-all demo test coverage lint data browser-deps constraints bench bench-speed bench-accuracy bench-ablation bench-data clean

# The core package only (trains, evaluates, exports, predicts): what `make demo` needs, no test tools.
$(CORE): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(PIP) torch torchvision
	$(PIP) -e .
	touch $(CORE)

# Every extra (serve, text, tune, prune, dicom, tracking) and the test tools: what `make test` needs.
$(FULL): $(CORE)
	$(PIP) -e '.[all,dev]'
	touch $(FULL)

install: $(CORE)
install-all: $(FULL)

# Pin what is installed now as the tested set (after changing a range in pyproject.toml).
constraints: $(FULL)
	@{ sed -n '1,2p' $(CONSTRAINTS); $(BIN)/pip freeze --exclude-editable | grep -v '^-e\|^medcls'; } > $(CONSTRAINTS).tmp
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)

# Link the shared copy of PneumoniaMNIST when it exists; otherwise download it (official record, MD5-checked).
# Best effort: offline, one line says where to put the file; the tests that need it are skipped (pytest lists them).
data: install
	@mkdir -p data
	@if [ -f $(SHARED)/pneumoniamnist.npz ] && [ ! -e data/pneumoniamnist.npz ]; then \
		ln -s "$$(cd $(SHARED) && pwd)/pneumoniamnist.npz" data/pneumoniamnist.npz; \
		echo "linked $(SHARED)/pneumoniamnist.npz -> data/"; fi
	@[ -e data/pneumoniamnist.npz ] || $(BIN)/medcls data fetch pneumoniamnist --data-dir data || true

# Debian's Chromium for the web-page test (best effort: needs root; the test skips without it).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
		|| echo "chromium not installed: the browser test will be skipped"

demo: install data
	@[ -e data/pneumoniamnist.npz ] || exit 2   # the data step said where to put it
	$(BIN)/medcls train --config configs/pneumoniamnist.yaml

# MEDCLS_REQUIRE_ALL: a missing extra fails the run instead of skipping its tests. One pytest-xdist worker per
# core, whole modules per worker (their module-scoped trained fixtures are built once); `pytest -q tests/x.py`
# alone runs in one process.
test: install-all data browser-deps
	MEDCLS_REQUIRE_ALL=1 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n auto --dist loadfile

# Line coverage of src/medcls by the whole suite, in one process (the CLI/DDP subprocesses are not measured).
coverage: install-all data
	MEDCLS_REQUIRE_ALL=1 HF_HUB_OFFLINE=1 $(BIN)/coverage run --source=medcls -m pytest -q -p no:xdist
	$(BIN)/coverage report | tail -1

lint: install-all
	$(BIN)/ruff check src tests benchmarks

bench: bench-speed bench-accuracy

bench-speed: install data
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/speed.py

bench-accuracy: install data
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/accuracy.py --seeds 0 1 2

bench-data: install-all data   # issue 15's data-path benchmark (MONAI for the side-by-side)
	$(PIP) -e '.[bench]'
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/data_scale.py

bench-ablation: install data   # ~8 min per run on 2 CPU cores; resumable (results in runs/ablation)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/ablation.py --out runs/ablation --seeds 0 1 2

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
