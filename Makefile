# Two commands do all set-up on a fresh machine (README):
#   make demo   create/reuse .venv, install pqd, train a small baseline on the embedded CIFAR-10 subset
#   make test   create/reuse .venv, install pqd with notebook and test extras, run the test suite (unit tests + nbval)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pqd-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

# Everything (notebooks, ONNX, reports, tests) at the exact versions of constraints.txt.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[notebooks,openvino,test]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/pqd train --preset mini --source embedded

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/latency.py

clean:
	rm -rf $(VENV) .pytest_cache
