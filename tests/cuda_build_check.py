"""Checks of a CUDA build on a machine without a GPU (run by `make cuda-build-check`).

usage: python tests/cuda_build_check.py BUILD_LOG

1. the ptxas report in BUILD_LOG (built with MUONEXT_PTXAS_VERBOSE=1) has no register spills or stack
   frames in the Newton–Schulz kernels (other kernels' spills are listed, not fatal), and no wgmma
   serialisation warning (C75xx "wgmma.mma_async instructions are serialized") in any kernel;
2. the extension imports without a GPU and is a CUDA build, with the sm_90a kernels when 90a was built;
3. every op has a CUDA kernel registered with the dispatcher.
"""

from __future__ import annotations

import re
import sys

OPS = ("newton_schulz", "newton_schulz_grouped", "muon_momentum_", "muon_apply_", "pack", "unpack_")


def spill_report(log: str) -> tuple[list[str], list[str], int]:
    """(NS kernels with spills, other kernels with spills, number of kernel reports) from a ptxas -v log."""
    entry = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
    usage = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
    ns_bad, other_bad, seen, current = [], [], 0, None
    for line in log.splitlines():
        if m := entry.search(line):
            current = f"{m.group(1)} ({m.group(2)})"
        elif (m := usage.search(line)) and current is not None:
            seen += 1
            stack, stores, loads = (int(v) for v in m.groups())
            if stores or loads or stack:
                text = f"{current}: {stack} B stack, {stores} B spill stores, {loads} B spill loads"
                ns_kernel = "ns_dev" in current or "GemmUniversal" in current or "sm90" in current
                (ns_bad if ns_kernel else other_bad).append(text)
            current = None
    return ns_bad, other_bad, seen


def main() -> int:
    log = open(sys.argv[1], encoding="utf-8", errors="replace").read()
    ns_bad, other_bad, seen = spill_report(log)
    ns_seen = log.count("ns_dev")
    print(f"ptxas: {seen} kernel reports ({ns_seen} lines naming Newton–Schulz kernels)")
    for text in other_bad:
        print(f"  note (not an NS kernel): {text}")
    failed = False
    if seen == 0 or ns_seen == 0:
        # an incremental rebuild recompiles nothing and so reports nothing; CI builds from clean
        print("WARNING: no ptxas report of the Newton–Schulz kernels in the log (incremental build, or "
              "MUONEXT_PTXAS_VERBOSE unset?): spills NOT checked; rebuild from clean: rm -rf build/cuda-temp")
    for text in ns_bad:
        print(f"FAIL: spill in a Newton–Schulz kernel: {text}")
        failed = True
    if not ns_bad and seen:
        print("ptxas: no spills in the Newton–Schulz kernels")
    serialised = [line.strip()[:200] for line in log.splitlines() if "wgmma.mma_async instructions are serialized" in line]
    for line in serialised:
        print(f"FAIL: {line}")
    failed = failed or bool(serialised)
    if "sm_90a" in log and "ns_sm90_gemm_kmajor.cu" in log and "GemmUniversal" not in log:
        # compiled for sm_90a in this build, yet ptxas reported no CUTLASS kernel: the sm90 path is empty
        print("FAIL: ns_sm90_gemm_kmajor.cu was compiled for sm_90a but no CUTLASS GemmUniversal kernel was reported")
        failed = True

    import torch

    import muonext

    if not muonext.HAS_EXT or not muonext.HAS_CUDA_EXT:
        print(f"FAIL: extension loaded={muonext.HAS_EXT} cuda={muonext.HAS_CUDA_EXT} error={muonext.LOAD_ERROR}")
        return 1
    print(f"extension: {muonext.BUILD_INFO}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"GPU visible: {torch.cuda.is_available()}")
    archs = muonext.BUILD_INFO.get("cuda_archs", "").split(";")
    if ("90a" in archs) != bool(muonext.BUILD_INFO.get("sm90_kernels")):
        print(f"FAIL: cuda_archs={archs} but sm90_kernels={muonext.BUILD_INFO.get('sm90_kernels')}")
        failed = True
    for op in OPS:
        ok = torch._C._dispatch_has_kernel_for_dispatch_key(f"muonext::{op}", "CUDA")
        print(f"  muonext::{op}: CUDA kernel {'registered' if ok else 'MISSING'}")
        failed = failed or not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
