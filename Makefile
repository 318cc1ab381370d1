# The README's commands. Both work from a fresh clone with nothing but Python 3.10+ installed:
#   make test   creates .venv (CPU torch + test deps), builds the extension, runs the C++ and Python tests
#   make demo   runs the main job (train_moonlight.py, tiny preset) on the embedded default data
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
	$(PY) examples/train_moonlight.py --preset tiny --out runs/demo

bench: build
	$(PY) -m pytest bench --benchmark-only -q

clean:
	rm -rf build muonext/_C*.so *.egg-info

# ---- CUDA build check on a machine without a GPU (CI): compiles the CUDA kernels for sm_80 and sm_90a
# out of tree (build/cuda-pkg, so the CPU build in muonext/ is untouched), checks the ptxas report for
# spills in the Newton–Schulz kernels, imports the extension, checks that every op has a CUDA kernel
# and runs the opcheck / compile tests there (the CUDA tests skip without a GPU).
VENV_CUDA   ?= .venv-cuda
PY_CUDA     := $(VENV_CUDA)/bin/python
TORCH_CUDA  ?= torch==2.14.1
CUDA_ARCHS  ?= 80;90a
CUDA_PKG    := build/cuda-pkg
# libcudart.so for the link, also for toolkits that keep it in lib/ rather than lib64/
CUDA_LIBDIRS = $(subst $(eval) ,:,$(wildcard $(CUDA_HOME)/lib64 $(CUDA_HOME)/lib /usr/local/cuda/lib64 /usr/local/cuda/lib))

.PHONY: cuda-build-check device-wheels

# The pure-Python / py3-none wheels bench/device_check.sh installs on a bare GPU machine (carry .whl/).
DEVICE_WHEELS = pytest iniconfig pluggy packaging pygments expecttest ninja "nvidia-cutlass==4.2.0.0" exceptiongroup tomli
device-wheels: $(VENV)/.installed
	$(PY) -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d .whl $(DEVICE_WHEELS)

$(VENV_CUDA)/.installed:
	@test -x $(PY_CUDA) || $(PYTHON) -m venv $(VENV_CUDA)
	$(PY_CUDA) -m pip install -q --disable-pip-version-check "setuptools>=70" wheel $(TORCH_CUDA) nvidia-cutlass \
		ninja "pytest>=8" numpy expecttest safetensors tqdm
	@touch $@

cuda-build-check: $(VENV_CUDA)/.installed
	@mkdir -p $(CUDA_PKG)
	$(PY_CUDA) -c "import shutil; [shutil.copytree(d, '$(CUDA_PKG)/' + d, dirs_exist_ok=True, \
		ignore=shutil.ignore_patterns('*.so', '__pycache__')) for d in ('muonext', 'tests')]; \
		shutil.copy('pyproject.toml', '$(CUDA_PKG)/')"
	@echo "building the CUDA extension (log: build/cuda-build.log)"
	@# CPATH: the CUDA math-library headers (cusparse.h, cublas_v2.h, ... that torch's headers include) of the
	@# nvidia-* wheels torch depends on, for toolkits that ship without them.
	@CPATH="$$($(PY_CUDA) -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "include"))')$${CPATH:+:$$CPATH}" \
	LIBRARY_PATH="$(CUDA_LIBDIRS)$${LIBRARY_PATH:+:$$LIBRARY_PATH}" \
	MAX_JOBS=$(JOBS) MUONEXT_CUDA=1 MUONEXT_CUDA_ARCHS="$(CUDA_ARCHS)" MUONEXT_PTXAS_VERBOSE=1 nice -n 10 \
		$(PY_CUDA) setup.py -q build_ext --build-lib $(CUDA_PKG) --build-temp build/cuda-temp \
		> build/cuda-build.log 2>&1 || (tail -n 60 build/cuda-build.log; exit 1)
	cd $(CUDA_PKG) && PYTHONPATH=. ../../$(PY_CUDA) tests/cuda_build_check.py ../cuda-build.log
	cd $(CUDA_PKG) && ../../$(PY_CUDA) -m pytest -q -p no:cacheprovider tests/test_newton_schulz.py \
		tests/test_update_ops.py tests/test_compile_and_fallback.py tests/test_cuda_kernels.py -k "opcheck or compile or cuda"
