# qwen-gateway: `make serve` runs the embedded default, `make test` runs every check and test.
# Both create the virtual environment and install what they need on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch for the embedded default and the tests. On a GPU host, install the
# CUDA build you want first (or override: make serve TORCH='torch==2.13.0').
TORCH  ?= torch==2.13.0
HOST   ?= 127.0.0.1
PORT   ?= 8000
DATA   ?= ./data

.PHONY: install serve check test bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[local,dev]'
	touch $@

install: $(BIN)/.installed

serve: install
	$(BIN)/qwen-gateway serve --host $(HOST) --port $(PORT) --data-dir $(DATA)

check: install
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/mypy src
	$(BIN)/lint-imports

test: check
	$(BIN)/pytest

bench: install
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
