# SiloBridge developer commands. Every target creates or reuses the local .venv.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test lint protos protos-check demo silo-demo migration-demo bench bench-live bench-milvus clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"

# torch first, from the CPU wheel pinned in constraints.txt: an unpinned torch pulled in by
# sentence-transformers would be a multi-GB CUDA build.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt torch
	$(BIN)/pip install --quiet -c constraints.txt -e ".[models,dev]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python scripts/check_deploy.py

protos: install
	bash scripts/gen_protos.sh

protos-check: install
	bash scripts/check_protos.sh

test: install lint protos-check
	$(BIN)/pytest

# Three organizations, a coordinator and federated search on loopback (deploy/local/README.md).
demo: install
	$(BIN)/python deploy/local/consortium_demo.py

# The KJV silo moves to another embedding model while a client queries it (README, Migration).
migration-demo: install
	$(BIN)/python deploy/local/migration_demo.py

# One silo alone: PKI, ingest, serve over mTLS, query.
silo-demo: install
	bash deploy/local/silo_quickstart.sh

bench: install
	$(BIN)/python scripts/bench.py

# The live query path under load: a loopback consortium, 100k+ documents per silo (HNSW).
bench-live: install
	$(BIN)/python scripts/bench_live.py $(BENCH_LIVE_ARGS)

# A silo's index, FAISS against Milvus (Lite), through silo serve over mTLS (~3-5 minutes).
bench-milvus: install
	$(BIN)/python scripts/bench_milvus.py $(BENCH_MILVUS_ARGS)

clean-demo:
	rm -rf demo-run
