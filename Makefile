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

# A few pytest processes (tests/run_suite.py says why): not one for the whole suite, which died with
# SIGSEGV halfway, and not one per file, which paid the start-up 30 times.
test: lint
	$(PY) tests/run_suite.py

demo: $(STAMP)
	$(VENV)/bin/deltadistill demo $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
