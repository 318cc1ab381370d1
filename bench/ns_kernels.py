"""CUDA kernels of muonext against their strongest PyTorch alternatives (median of CUDA-event timings).

  python bench/ns_kernels.py [--quick] [--repeats N]

Newton–Schulz (bf16, 5 quintic steps): time, useful TFLOP/s (the full-GEMM FLOPs of the textbook
algorithm, 5 · (4·m²·n + 2·m³) per matrix, m ≤ n — the symmetric kernels do fewer) and × baseline
against (a) the same algorithm on torch bf16 bmm/baddbmm (cuBLAS, `reference.newton_schulz_ref`) and
(b) `torch.optim._muon._zeropower_via_newtonschulz` (2-D inputs only). The fused update and pack ops:
GB/s of the bytes they must move and the fraction of a device-to-device copy's GB/s.
muonext is timed on each bf16 backend the GPU supports (sm80: mma.sync kernels; sm90: CUTLASS
wgmma/TMA grouped GEMMs, compute capability 9.0 only). A last table times a whole Moonlight layer's
Muon matrices (experts, attention, shared expert) as one `newton_schulz_grouped` call against one
cuBLAS NS call per shape. Without a GPU it says so and exits 0 (nothing to measure).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from muonext import ops, reference
from muonext.optim.coefficients import ns_schedule

KELLER5 = ops.flatten_coefficients(ns_schedule("keller", 5))
NS_SHAPES = [("moonlight experts", (64, 1408, 2048)), ("attention 2048²", (2048, 2048)),
             ("attention 576×2048", (576, 2048)), ("small batch", (64, 256, 256))]


def cuda_time_ms(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def backends() -> list[str]:
    """The bf16 NS backends this GPU and build can run."""
    import muonext

    ok = torch.cuda.get_device_capability() == (9, 0) and muonext.BUILD_INFO.get("sm90_kernels")
    return ["sm80", "sm90"] if ok else ["sm80"]


def _with_backend(name: str, fn):
    with ops.ns_backend(name):
        return fn()


def ns_flops(shape) -> float:
    batch = shape[0] if len(shape) == 3 else 1
    m, n = sorted(shape[-2:])
    return batch * 5 * (4.0 * m * m * n + 2.0 * m**3)


def bench_ns(args) -> None:
    print(f"{'Newton–Schulz bf16':<22}{'shape':>18}{'impl':>14}{'ms':>10}{'TFLOP/s':>10}{'× cuBLAS NS':>13}")
    try:
        from torch.optim._muon import _zeropower_via_newtonschulz as torch_ns
    except ImportError:
        torch_ns = None
    for name, shape in NS_SHAPES[1:2] if args.quick else NS_SHAPES:
        x = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
        impls = {f"muonext {b}": (lambda b=b: _with_backend(b, lambda: ops.newton_schulz(x, KELLER5, 1e-7)))
                 for b in backends()}
        impls["cuBLAS NS"] = lambda: reference.newton_schulz_ref(x, KELLER5, 1e-7)
        if torch_ns is not None and x.dim() == 2:
            impls["torch.optim"] = lambda: torch_ns(x, (3.4445, -4.7750, 2.0315), 5, 1e-7)
        times = {k: cuda_time_ms(f, args.warmup, args.repeats) for k, f in impls.items()}
        for k, ms in times.items():
            tflops = ns_flops(shape) / (ms * 1e-3) / 1e12
            print(f"{name:<22}{'×'.join(map(str, shape)):>18}{k:>14}{ms:>10.3f}{tflops:>10.1f}"
                  f"{times['cuBLAS NS'] / ms:>12.2f}×")


# One Moonlight-16B-A3B MoE layer's Muon matrices (hidden 2048, 64 experts of 1408, MLA with
# kv_lora_rank 512, q without LoRA): a grouped call against one cuBLAS NS per shape.
LAYER_SHAPES = [(128, 1408, 2048), (64, 2048, 1408), (2048, 3072), (576, 2048), (4096, 512), (2048, 2048),
                (2, 1408, 2048), (2048, 1408)]


def bench_grouped(args) -> None:
    xs = [torch.randn(s, device="cuda", dtype=torch.bfloat16) for s in LAYER_SHAPES]
    impls = {f"muonext {b} grouped": (lambda b=b: _with_backend(b, lambda: ops.newton_schulz_grouped(xs, KELLER5)))
             for b in backends()}
    impls["cuBLAS NS per shape"] = lambda: [reference.newton_schulz_ref(x, KELLER5, 1e-7) for x in xs]
    times = {k: cuda_time_ms(f, args.warmup, args.repeats) for k, f in impls.items()}
    flops = sum(ns_flops(s) for s in LAYER_SHAPES)
    print(f"\n{'one Moonlight MoE layer':<30}{'shapes':>8}{'ms':>10}{'TFLOP/s':>10}{'× cuBLAS NS':>13}")
    for k, ms in times.items():
        print(f"{k:<30}{len(xs):>8}{ms:>10.3f}{flops / (ms * 1e-3) / 1e12:>10.1f}"
              f"{times['cuBLAS NS per shape'] / ms:>12.2f}×")


def bench_bandwidth(args) -> None:
    # a Moonlight-like expert layer: fp32 state, bf16 gradients / updates / NS input
    count = 8 if args.quick else 48
    numel = 1408 * 2048
    bufs = [torch.randn(numel, device="cuda") for _ in range(count)]
    params = [torch.randn(numel, device="cuda") for _ in range(count)]
    grads = [torch.randn(numel, device="cuda", dtype=torch.bfloat16) for _ in range(count)]
    outs = [torch.empty(numel, device="cuda", dtype=torch.bfloat16) for _ in range(count)]
    flat = torch.empty(count * numel, device="cuda", dtype=torch.bfloat16)
    total = count * numel
    cases = {
        "muon_momentum_ (fp32 buf, bf16 grad/out)": (12, lambda: ops.muon_momentum_(bufs, grads, outs, 0.95, True)),
        "muon_apply_ (fp32 param, bf16 update)": (10, lambda: ops.muon_apply_(params, outs, [1e-3] * count,
                                                                                [0.1] * count, [0.4] * count)),
        "pack (fp32 → bf16)": (6, lambda: ops.pack(params, torch.bfloat16)),
        "unpack_ (bf16 → fp32)": (6, lambda: ops.unpack_(flat, params)),
    }
    src = torch.empty(total * 6, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = cuda_time_ms(lambda: dst.copy_(src), args.warmup, args.repeats)
    copy_gbs = 2 * src.numel() / (copy_ms * 1e-3) / 1e9
    print(f"\n{'multi-tensor op':<44}{'tensors':>8}{'ms':>10}{'GB/s':>10}{'of copy':>10}")
    print(f"{'device-to-device copy (baseline)':<44}{1:>8}{copy_ms:>10.3f}{copy_gbs:>10.0f}{'100%':>10}")
    for name, (bytes_per_elem, fn) in cases.items():
        ms = cuda_time_ms(fn, args.warmup, args.repeats)
        gbs = bytes_per_elem * total / (ms * 1e-3) / 1e9
        print(f"{name:<44}{count:>8}{ms:>10.3f}{gbs:>10.0f}{gbs / copy_gbs:>9.0%}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one NS shape, fewer tensors (device smoke run)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: the GPU benchmarks are skipped (nothing measured)")
        return 0
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | muonext CUDA kernels: "
          f"{ops.has_kernel('newton_schulz', 'cuda')}")
    if not ops.has_kernel("newton_schulz", "cuda"):
        print("warning: the extension has no CUDA kernels; 'muonext' rows time the PyTorch fallback")
    bench_ns(args)
    if not args.quick:
        bench_grouped(args)
    bench_bandwidth(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
