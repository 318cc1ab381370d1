"""Builds muonext._C: the CPU ops always, the CUDA ops when torch is a CUDA build and nvcc exists.

Environment flags (all documented in the README):
  MUONEXT_CUDA=auto|1|0     auto (default): CUDA when torch.version.cuda and CUDA_HOME/nvcc exist;
                            1: require it (fail if impossible); 0: CPU only.
  MUONEXT_CUDA_ARCHS        ";"-separated SM targets, default "80;90a" (e.g. "90a" for H100/H200 only).
  MUONEXT_DEBUG=1           -O0 -g, host and device, and MUONEXT_DEBUG defined.
  MUONEXT_PTXAS_VERBOSE=1   pass -Xptxas -v to nvcc (register/spill report in the build log).
  CUTLASS_HOME              CUTLASS checkout (its include/ is used); default: the nvidia-cutlass wheel.
  MAX_JOBS                  parallel compile jobs (read by torch's ninja build).
A visible GPU is never needed: the decision never calls torch.cuda.is_available().
"""

from __future__ import annotations

import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")


def _flag(name: str, default: str) -> str:
    return os.environ.get(name, default).strip().lower()


def want_cuda() -> bool:
    mode = _flag("MUONEXT_CUDA", "auto")
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"MUONEXT_CUDA must be auto, 0 or 1, got {mode!r}")
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if mode == "1" and not possible:
        raise SystemExit(
            "MUONEXT_CUDA=1 but a CUDA build is impossible: "
            f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={CUDA_HOME!r} (install a CUDA build of torch "
            "and the CUDA toolkit, or set CUDA_HOME)"
        )
    return possible and mode != "0"


def cuda_arch_flags() -> tuple[str, list[str]]:
    archs = [a.strip() for a in os.environ.get("MUONEXT_CUDA_ARCHS", "80;90a").split(";") if a.strip()]
    flags = []
    for arch in archs:
        if not arch.rstrip("a").isdigit():
            raise SystemExit(f"MUONEXT_CUDA_ARCHS: {arch!r} is not an SM number like 80 or 90a")
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return ";".join(archs), flags


def cutlass_include() -> list[str]:
    home = os.environ.get("CUTLASS_HOME")
    if home:
        return [os.path.join(home, "include"), os.path.join(home, "tools", "util", "include")]
    try:
        import cutlass_library  # the nvidia-cutlass wheel ships the headers

        base = os.path.join(os.path.dirname(cutlass_library.__file__), "source")
        return [os.path.join(base, "include"), os.path.join(base, "tools", "util", "include")]
    except ImportError:
        return []


def extension():
    debug = _flag("MUONEXT_DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    defines = ["-DMUONEXT_DEBUG"] if debug else []
    sources = [os.path.join(CSRC, "ops.cpp")] + sorted(glob.glob(os.path.join(CSRC, "*", "*.cpp")))
    cxx = opt + defines + ["-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
    include_dirs = [os.path.join(ROOT, CSRC)]
    if not want_cuda():
        return CppExtension(
            "muonext._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"],
        )
    archs, gencode = cuda_arch_flags()
    cuda_defines = ["-DMUONEXT_WITH_CUDA", f'-DMUONEXT_CUDA_ARCHS="{archs}"']
    if "90a" in archs.split(";"):  # the CUTLASS wgmma/TMA Newton–Schulz kernels (csrc/newton_schulz/ns_sm90_*)
        cuda_defines.append("-DMUONEXT_WITH_SM90A")
    # NDEBUG: no device assert() in CUTLASS kernels, whose calls serialise the wgmma pipeline (ptxas C7510)
    nvcc = opt + defines + ([] if debug else ["-DNDEBUG"]) + cuda_defines + gencode + [
        "--expt-relaxed-constexpr", "--expt-extended-lambda", "-lineinfo",
        "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    ]
    if debug:
        nvcc.append("-G")
    if _flag("MUONEXT_PTXAS_VERBOSE", "0") == "1":
        nvcc += ["-Xptxas", "-v"]
    cu_sources = sorted(glob.glob(os.path.join(CSRC, "*", "*.cu")))
    return CUDAExtension(
        "muonext._C", sources + cu_sources, include_dirs=include_dirs + cutlass_include(),
        extra_compile_args={"cxx": cxx + cuda_defines, "nvcc": nvcc}, extra_link_args=["-fopenmp"],
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
