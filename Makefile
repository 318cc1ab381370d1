# The README's commands. Both work from a fresh clone with nothing but Python 3.10+ installed:
#   make test   creates .venv (CPU torch + test deps), builds the extension, runs the C++ and Python tests
#   make demo   runs the main job on the embedded default data
# Others: make bench (kernel microbenchmarks), make cpp-test, make build, make clean.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
JOBS   ?= 2

.PHONY: test demo bench build cpp-test clean

$(VENV)/.installed: requirements-test.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "setuptools>=70" wheel $(TORCH) -r requirements-test.txt
	@touch $@

build: $(VENV)/.installed
	MAX_JOBS=$(JOBS) MUONEXT_CUDA=$${MUONEXT_CUDA:-0} $(PY) -m pip install -q --disable-pip-version-check \
		--no-build-isolation --no-deps -e .

cpp-test:
	cmake -S . -B build/cpp -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build build/cpp -j $(JOBS) > /dev/null
	cd build/cpp && ctest --output-on-failure

test: build cpp-test
	$(PY) -m pytest -q

demo: build
	$(PY) examples/muon_quickstart.py

bench: build
	$(PY) -m pytest bench --benchmark-only -q

clean:
	rm -rf build muonext/_C*.so *.egg-info
