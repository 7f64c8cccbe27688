# Two commands: `make demo` and `make test`. Both create (or reuse) .venv, install
# torch==2.13.0 first (the CPU build), then steadygrad with its extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.steadygrad-installed
# Test processes: the CI machine's 2 cores (each test runs torch on one thread, tests/conftest.py).
WORKERS ?= 2

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[all,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/steadygrad demo

test: $(STAMP)
	$(PY) -m pytest -q -n $(WORKERS) --dist loadscope

lint: $(STAMP)
	$(VENV)/bin/ruff check steadygrad tests bench
	$(VENV)/bin/ruff format --check steadygrad tests bench

bench: $(STAMP)
	for f in bench/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
