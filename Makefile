# Quick start: `make serve` runs the service on embedded defaults (local database, WhatsApp sandbox);
# `make test` runs the whole test suite (installing what it needs first).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

serve: $(BIN)/.installed
	$(BIN)/consentbot serve

test: $(BIN)/.installed
	bash .ci/browser
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check bot tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(BIN)/.installed
	$(BIN)/python bench/decide.py
	$(BIN)/python bench/store_commit.py
	$(BIN)/python bench/pipeline.py --returning 200
	if command -v valgrind >/dev/null; then $(BIN)/python bench/instructions.py; else echo 'bench/instructions.py skipped: it needs valgrind'; fi
	$(BIN)/python bench/campaign.py --store memory --recipients 100000 --rate 1000

clean:
	rm -rf $(VENV) .consentbot
