"""The skinny GEMM (muonext.ops.skinny_linear) against F.linear (MKL sgemm) at decode-step shapes, fp32 CPU.

    python bench/skinny_gemm.py [--threads 1] [--repeats 31]

Each shape is timed with W hot (in cache, the same call repeated) and cold (a 64 MiB buffer written before
every call, as the weights of a whole model step through the caches between two uses in decoding).
Median microseconds per call, the two candidates interleaved; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from timer import machine_line

from muonext import ops

# (rows, in, out): the tiny preset's lm_head, dense MLP, a routed expert, q_proj; rows = tokens in the step
SHAPES = [(r, 256, 8192) for r in (1, 4, 16, 32, 64)] + [
    (16, 256, 768), (64, 256, 768), (16, 768, 256), (4, 256, 128), (16, 256, 192), (64, 128, 384)
]


def medians_us(fns: dict, repeats: int, flush: torch.Tensor | None) -> dict:
    times = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            if flush is not None:
                flush.add_(1.0)
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: 1e6 * statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=31)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not ops.cpu_fast_kernels():
        sys.exit("this CPU (or build) has no AVX-512 skinny kernel: ops.skinny_linear would be F.linear")
    print(f"{machine_line()}, threads={args.threads}, median of {args.repeats}")
    print("| rows × in × out | W | F.linear (µs) | skinny_linear (µs) | speed-up |")
    print("|---|---|---|---|---|")
    flush = torch.zeros(16 * 1024 * 1024)
    for rows, k, n in SHAPES:
        x, w = torch.randn(rows, k), torch.randn(n, k)
        fns = {"mkl": lambda x=x, w=w: F.linear(x, w), "ours": lambda x=x, w=w: ops.skinny_linear(x, w)}
        for label, buf in (("hot", None), ("cold", flush)):
            t = medians_us(fns, args.repeats, buf)
            print(f"| {rows} × {k} × {n} | {label} | {t['mkl']:.0f} | {t['ours']:.0f} | {t['mkl'] / t['ours']:.2f}× |")


if __name__ == "__main__":
    main()
