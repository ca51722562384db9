# Needs only Python 3.11+ and make: uv is bootstrapped into .tools/, the project into .venv/.
PYTHON ?= python3
UV := .tools/bin/uv
VENV := .venv
UV_VERSION := 0.13.9

.PHONY: demo test lint typecheck protos check-protos install browsers clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-extras --quiet
	touch $@

install: $(VENV)/.installed

## Run the server on embedded SQLite with simulated GPU nodes; dashboard on http://127.0.0.1:8000/
demo: install
	$(VENV)/bin/agft demo

## Run the whole test suite (PostgreSQL tests run when AGFT_TEST_POSTGRES_URL is set)
test: install
	$(VENV)/bin/python -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

protos: install
	PATH="$(VENV)/bin:$$PATH" PYTHON=$(VENV)/bin/python protos/generate.sh

clean:
	rm -rf .venv .tools .pytest_cache .mypy_cache .ruff_cache agft.db agft.db-wal agft.db-shm
