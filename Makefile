# The README's quick start: `make demo` runs the main job, `make test` runs the checks.
# Both create .venv and install latprune into it when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.latprune-installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test lint format venv data cross-tools clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@# A bare `torch` requirement would pull the multi-GB CUDA build: install the CPU wheel first,
	@# unless a torch (CPU or CUDA, see README) is already importable in the venv.
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	@$(BIN)/python -m pip install -q -e ".[test]"
	@touch $(STAMP)

data:
	@if $(BIN)/python -c "from latprune.data import find_dataset_root; find_dataset_root('fashion-mnist')" 2>/dev/null; then \
		true; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "Installing Fashion-MNIST from Debian's dataset-fashion-mnist package..."; \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
		echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist', or put the four"; \
		echo "*-ubyte.gz files in ~/.cache/latprune/data/fashion-mnist (or set LATPRUNE_DATA to their folder)."; \
		exit 1; \
	fi

demo: venv data
	$(BIN)/latprune demo

# The aarch64 (NEON) kernel checks cross-compile and run under qemu: install Debian's cross gcc and qemu-user when
# root and apt are here; elsewhere (or offline) those tests skip, and the rest of `make test` runs as before.
cross-tools:
	@if ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || ! command -v qemu-aarch64 >/dev/null 2>&1; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			echo "Installing gcc-aarch64-linux-gnu and qemu-user for the aarch64 kernel tests..."; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
				gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user) >/dev/null 2>&1 \
				|| echo "Could not install them; the aarch64 tests will skip."; \
		else \
			echo "No aarch64-linux-gnu-gcc / qemu-aarch64 (apt-get install gcc-aarch64-linux-gnu qemu-user as root):" \
				"the aarch64 tests will skip."; \
		fi; \
	fi

test: venv cross-tools
	$(BIN)/ruff check latprune tests benchmarks
	$(BIN)/ruff format --check latprune tests benchmarks
	$(BIN)/python -m pytest -n 2

lint: venv
	$(BIN)/ruff check latprune tests benchmarks
	$(BIN)/ruff format --check latprune tests benchmarks

format: venv
	$(BIN)/ruff format latprune tests benchmarks
	$(BIN)/ruff check --fix latprune tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
