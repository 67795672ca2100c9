# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.medcls-installed
SHARED ?= ../shared/data/medmnist
export NO_ALBUMENTATIONS_UPDATE = 1

.PHONY: install demo test lint data browser-deps bench bench-speed bench-accuracy bench-ablation clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,prune]'
	touch $(STAMP)

install: $(STAMP)

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

test: install data browser-deps
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks

bench: bench-speed bench-accuracy

bench-speed: install data
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/speed.py

bench-accuracy: install data
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/accuracy.py --seeds 0 1 2

bench-ablation: install data   # ~8 min per run on 2 CPU cores; resumable (results in runs/ablation)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/ablation.py --out runs/ablation --seeds 0 1 2

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
