# The README's two commands are `make demo` (after `make install`, which it runs itself) and
# `make test`. Every target uses the project's own virtual environment in .venv.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint typecheck unit crds bench demo example-clip up images clean

install: $(STAMP)

# torch first, pinned to the CPU wheel: any other request pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[operator,worker,agent,dev]"
	$(PY) -m pip check
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check sdk operator worker-image tests bench
	$(VENV)/bin/ruff format --check sdk operator worker-image tests bench

typecheck: install
	$(VENV)/bin/mypy sdk/avatar_sdk operator/avatar_operator worker-image/avatar_worker

unit: install
	$(PY) -m pytest

# The README's test command: lint, types, every test layer that runs without a cluster.
test: lint typecheck unit

crds: install
	$(PY) -m avatar_sdk.crd --out crds/avatarsessions.yaml

# Each prints one JSON object (see the README for figures and the machine they came from).
bench: install
	@for b in bench/*.py; do echo "# $$b"; $(PY) $$b || exit 1; done

# The main job without a cluster: the agent's TTS audio through the real worker pipeline
# (receiver → renderer → one-clock synchronizer → tracks), faster than real time, into an MP4.
# The whole-system demo (emulated cluster + operator + worker processes + an agent) replaces
# this with the [whole-system] issue.
DEMO_AUDIO ?= examples/hello.wav
demo: install
	@if command -v espeak-ng >/dev/null 2>&1; then \
		espeak-ng -w demo.wav "Hello! I am your avatar. My lips follow my voice, and I stop the moment you interrupt me." && audio=demo.wav; \
	else audio=$(DEMO_AUDIO); fi; \
	echo "rendering $$audio with the portrait renderer -> demo.mp4"; \
	$(VENV)/bin/avatar-worker render --audio $$audio --out demo.mp4 --report demo.json
	@echo "wrote demo.mp4 (H.264 + AAC) and demo.json; open demo.mp4 in any player."

# examples/clip.mp4: the default portrait speaking an espeak-ng sentence (see examples/README.md)
example-clip: install
	examples/clip.sh

up:
	@echo "make up: the kind cluster and images land with the [ship] issue (not built yet)."
	@exit 2

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info demo.mp4 demo.json demo.wav
