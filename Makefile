# The two commands a new user runs on a fresh clone: `make demo` and `make test`.
# Each creates .venv and installs the pinned dependencies itself; both are idempotent.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test test-arm install clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Re-installs when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m tvm_convt demo

# The aarch64 tier (tests marked arm: qemu and llvm-mca, 2-3 minutes more) runs apart, so that make test
# stays within its 15 minutes on two cores; CI (.ci/run) runs both.
test: $(VENV)/.installed-test
	$(PY) -m pytest -m "not arm" $(PYTEST_ARGS)

test-arm: $(VENV)/.installed-test
	$(PY) -m pytest -m arm $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
