# The two commands of a fresh machine:  make demo  and  make test.
# Both create .venv, install the Python dependencies, and fetch a Consul binary (scripts/get-consul).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

# Finds or downloads Consul; under CI=true a missing Consul stops the run, elsewhere the Consul tests skip.
WITH_CONSUL = consul_bin=$$(scripts/get-consul) || { \
	  case "$${CI:-}" in 1|true|TRUE|yes) echo "error: no Consul binary (see above)" >&2; exit 1;; esac; \
	  echo "warning: no Consul binary: the tests that need it will be skipped" >&2; consul_bin=; }; \
	export CONSUL_BIN="$$consul_bin";

# Finds or installs redis-server (scripts/get-redis) for the Celery tests on a Redis broker; as above,
# under CI=true a missing one stops the run, elsewhere those tests skip.
WITH_REDIS = redis_bin=$$(scripts/get-redis) || { \
	  case "$${CI:-}" in 1|true|TRUE|yes) echo "error: no redis-server (see above)" >&2; exit 1;; esac; \
	  echo "warning: no redis-server: the Celery tests on a Redis broker will be skipped" >&2; redis_bin=; }; \
	export REDIS_BIN="$$redis_bin";

.PHONY: demo test faults lint type check tox bench consul clean

$(STAMP): setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,apscheduler,django,celery,prometheus,dev]'
	touch $(STAMP)

consul:
	@scripts/get-consul

demo: $(STAMP)
	@$(WITH_CONSUL) $(BIN)/python examples/demo.py

test: $(STAMP)
	@$(WITH_CONSUL) $(WITH_REDIS) $(BIN)/python -m pytest $(PYTEST_ARGS)

# Every fault of tests/faults (make test runs only the CI set), FAULT_TRIALS trials each (3 by default);
# FAULT_SET=name,name narrows it. The report: .faults/all/report.md and report.json, logs beside them.
faults: $(STAMP)
	@$(WITH_CONSUL) FAULT_SET="$${FAULT_SET:-all}" FAULT_TRIALS="$${FAULT_TRIALS:-3}" \
	  $(BIN)/python -m pytest tests/faults $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

type: $(STAMP)
	$(BIN)/mypy

check: lint type test

# Every supported Python (3.10 to 3.13), plus lint and type; pyenv's versions are put on PATH for tox.
tox: $(STAMP)
	@$(WITH_CONSUL) $(WITH_REDIS) if command -v pyenv >/dev/null; then \
	  for v in $$(pyenv versions --bare); do PATH="$$(pyenv root)/versions/$$v/bin:$$PATH"; done; export PATH; fi; \
	$(BIN)/tox $(TOX_ARGS)

# Every benchmark on the venv's Python; the call overhead also on Python 3.13 when pyenv has it.
bench: $(STAMP)
	@$(WITH_CONSUL) for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done; \
	if command -v pyenv >/dev/null; then PATH="$$(pyenv root)/versions/$$(pyenv versions --bare | grep '^3\.13' | tail -1)/bin:$$PATH"; fi; \
	if python3.13 -V >/dev/null 2>&1; then echo "== bench/bench_call_overhead.py on Python 3.13"; \
	python3.13 bench/bench_call_overhead.py; fi

clean:
	rm -rf $(VENV) .tox .mypy_cache .ruff_cache .pytest_cache build dist *.egg-info
