"""Loads the compiled extension `muonext._C` without ever raising or initialising CUDA.

Importing `_C` registers the `torch.ops.muonext.*` kernels. When it is missing or broken, the
package still works on the pure-PyTorch references in `reference.py`; a single warning says why.
"""

from __future__ import annotations

import importlib
import warnings

import torch  # noqa: F401  (loads libc10/libtorch, which _C links against, before _C itself)

HAS_EXT = False
HAS_CUDA_EXT = False
CPU_FAST_KERNELS = False  # this CPU runs the AVX-512 decode kernels (skinny GEMM, MLA decode attention)
BUILD_INFO: dict = {}
LOAD_ERROR: str | None = None

try:
    _C = importlib.import_module("muonext._C")  # registers the ops

    HAS_EXT = True
    BUILD_INFO = dict(_C.build_info())
    HAS_CUDA_EXT = bool(BUILD_INFO.get("cuda", False))
    CPU_FAST_KERNELS = bool(_C.cpu_fast_kernels())
except Exception as exc:  # ImportError, undefined symbols, ABI mismatch: all mean "no extension"
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"
    warnings.warn(
        f"muonext: the compiled extension could not be loaded ({LOAD_ERROR}); "
        "using the pure-PyTorch reference kernels. Build it with `pip install --no-build-isolation .`",
        RuntimeWarning,
        stacklevel=2,
    )
