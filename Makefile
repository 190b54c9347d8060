# Set-up installs torch first from the pinned constraints, so nothing can pull a CUDA build.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SYSPY  ?= python3

.PHONY: test demo lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(SYSPY) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,onnx]"
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check

test: lint
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/deltadistill demo $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
