# Two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
UV_VERSION := 0.13.9
# The newest Airflow we test against, and the oldest 3.x we support.
AIRFLOW ?= 3.3
OLDEST_AIRFLOW := 3.1
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-airflow-$(AIRFLOW)

.PHONY: venv test lint typecheck pytest test-oldest test-production dist demo emulator bench-emulator bench-triggers bench-triggerer bench-imports clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints/airflow-$(AIRFLOW).txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(BIN)/uv pip install --quiet --python $(BIN)/python \
		-c constraints/airflow-$(AIRFLOW).txt -e ".[test]"
	touch $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

# Extra pytest arguments, e.g. PYTEST_ARGS='-m "not production"'.
PYTEST_ARGS ?=

pytest: venv
	$(BIN)/pytest $(PYTEST_ARGS)

# The whole suite: lint, types and tests on the newest Airflow, then the tests on the oldest supported one
# (less the production-shaped deployment, ~6.5 min, which runs on the newest only).
test: lint typecheck pytest test-oldest

test-oldest:
	$(MAKE) pytest AIRFLOW=$(OLDEST_AIRFLOW) VENV=.venv-airflow-$(OLDEST_AIRFLOW) PYTEST_ARGS='-m "not production"'

# The production-shaped deployment alone (Postgres, Redis, CeleryExecutor, two triggerers; ~6.5 min).
test-production: venv
	$(BIN)/pytest tests/deployment/test_production.py -s $(PYTEST_ARGS)

emulator: venv
	$(BIN)/finetune-emulator --host 127.0.0.1 --port 8089

# Not part of the test suite: prints figures (requests/s, latency, RSS) for 1,000 concurrent jobs.
bench-emulator: venv
	$(BIN)/python benchmarks/bench_emulator.py --jobs 1000 --seconds 30

# The openai provider is only installed for the import comparison, pinned.
OPENAI_PROVIDER := apache-airflow-providers-openai==2.2.0

# Not part of the test suite: 100, 1,000 and 5,000 job triggers in one event loop against the emulator (0 and
# 100 ms latency), beside two baselines; prints stalls, notice latency, requests, connections, RSS, CPU; then
# the import cost of the operators module beside the openai provider's (~11 min).
bench-triggers: venv
	$(BIN)/python benchmarks/bench_triggers.py --n 100 1000 5000 --latency 0 0.1 --poll-interval 2
	$(BIN)/uv pip install --quiet --python $(BIN)/python "$(OPENAI_PROVIDER)"
	$(BIN)/python benchmarks/bench_imports.py --runs 5

# Not part of the test suite: 1,000 job waits in one real `airflow triggerer` (SQLite, an AIRFLOW_HOME of its
# own); prints its blocked-loop warnings while the waits start, run and fire, and its memory per trigger (~25 min).
bench-triggerer: venv
	$(BIN)/python benchmarks/bench_triggerer.py --n 1000

# Not part of the test suite: import cost of the operators and sensors modules beside the openai provider's.
bench-imports: venv
	$(BIN)/uv pip install --quiet --python $(BIN)/python "$(OPENAI_PROVIDER)"
	$(BIN)/python benchmarks/bench_imports.py --runs 5

demo: venv
	$(BIN)/python scripts/demo.py

# The sdist and the wheel a deployment installs (README: Installing into an Airflow deployment).
dist: venv
	$(BIN)/uv build --out-dir dist .

clean:
	rm -rf .venv .venv-airflow-* .pytest_cache .mypy_cache .ruff_cache dist .demo
