# Every target sets up .venv from requirements.txt on first use, so each works on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/demo
# pytest-xdist workers; JAX compiles are CPU-bound, so one per core.
TEST_WORKERS ?= 2

.PHONY: demo test format clean

$(VENV)/.installed: requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

demo: $(VENV)/.installed
	$(PY) -m reid_jax.main --config=configs/synthetic.py --workdir=$(WORKDIR)

# Format drift and lint errors fail the run before the tests start (`make format` fixes both).
test: $(VENV)/.installed
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS) --durations=15 tests

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) workdirs
