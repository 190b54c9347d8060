# Set-up installs torch first from the pinned constraints, so nothing can pull a CUDA build.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SYSPY  ?= python3

.PHONY: test demo lint bench clean

# rapidocr-onnxruntime only for the PP-OCRv4 ONNX files it ships (the `ppocr-det` teacher, Apache-2.0);
# without its dependencies, which would replace opencv-python-headless with the GUI build.
$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(SYSPY) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,onnx,openvino]"
	$(PY) -m pip install -q --no-deps rapidocr-onnxruntime==1.4.4
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check

# One process per test file: a single process for the whole suite died with SIGSEGV (exit 139, no
# Python traceback) about halfway, starting a subprocess, after ~150 tests had left onnxruntime,
# PyAV and torch state in it; every file passes in a process of its own.
test: lint
	@set -e; for f in tests/test_*.py; do echo "== $$f"; $(PY) -m pytest -q -p no:cacheprovider $$f; done

demo: $(STAMP)
	$(VENV)/bin/deltadistill demo $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
