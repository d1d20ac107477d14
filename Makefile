# ood_seg_ros: `make demo` runs the default bundle over the sample bag through the live
# node; `make test` runs the whole suite. Both set up .venv from scratch when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED ?= ../shared/data
DEMO_OUT ?= out/demo

.PHONY: venv test demo lint colcon clean

venv: $(STAMP)

# CPU PyTorch is pinned through constraints.txt: any other torch spec pulls CUDA wheels.
$(STAMP): requirements.txt constraints.txt setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -r requirements.txt
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider test

demo: $(STAMP)
	$(BIN)/ood-seg bag-eval test/data/sample.bag --mode live --out $(DEMO_OUT) --device cpu

lint: $(STAMP)
	$(BIN)/python -m pytest -q test/test_lint.py

clean:
	rm -rf build install log out .pytest_cache
