"""One optimizer step on the matrices of one Moonlight MoE layer (every dimension of the published
moonlight-16b-a3b config divided by 4, expert count kept), bf16 Newton–Schulz for every Muon.

Compares, in the same run (median of repeats):
  * muonext Muon (3-D expert tensors, batched NS, fused momentum/apply kernels)
  * torch.optim.Muon (2-D params only: each expert matrix is its own parameter)
  * torch.optim.AdamW (foreach)
and the NS throughput against this machine's batched-matmul rate at the same shapes and dtype.

    python bench/optimizer_step.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timer import interleaved_medians, machine_line  # noqa: E402

from muonext import HAS_EXT, ops  # noqa: E402
from muonext.optim import Muon, ns_schedule  # noqa: E402
from muonext.optim.muon import matrix_shape  # noqa: E402

HIDDEN, EXPERTS, MOE_INTER, SHARED_INTER = 2048 // 4, 64, 1408 // 4, 2 * 1408 // 4
HEADS, QK_NOPE, QK_ROPE, V_HEAD, KV_LORA = 16, 128 // 4, 64 // 4, 128 // 4, 512 // 4


def layer_shapes() -> dict[str, tuple[int, ...]]:
    """name -> shape of every parameter of one MoE layer (MLA attention with q_lora_rank None)."""
    return {
        "attn.q_proj": (HEADS * (QK_NOPE + QK_ROPE), HIDDEN),
        "attn.kv_a_proj_with_mqa": (KV_LORA + QK_ROPE, HIDDEN),
        "attn.kv_b_proj": (HEADS * (QK_NOPE + V_HEAD), KV_LORA),
        "attn.o_proj": (HIDDEN, HEADS * V_HEAD),
        "mlp.gate.weight": (EXPERTS, HIDDEN),
        "mlp.experts.gate_proj": (EXPERTS, MOE_INTER, HIDDEN),
        "mlp.experts.up_proj": (EXPERTS, MOE_INTER, HIDDEN),
        "mlp.experts.down_proj": (EXPERTS, HIDDEN, MOE_INTER),
        "mlp.shared_experts.gate_proj": (SHARED_INTER, HIDDEN),
        "mlp.shared_experts.up_proj": (SHARED_INTER, HIDDEN),
        "mlp.shared_experts.down_proj": (HIDDEN, SHARED_INTER),
        "input_layernorm": (HIDDEN,),
        "post_attention_layernorm": (HIDDEN,),
        "attn.kv_a_layernorm": (KV_LORA,),
    }


def make_params(split_experts: bool, seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for shape in layer_shapes().values():
        t = torch.randn(shape, generator=g) * 0.02
        pieces = list(t) if (split_experts and t.dim() == 3) else [t]
        for piece in pieces:
            p = torch.nn.Parameter(piece.clone())
            p.grad = torch.randn(piece.shape, generator=g) * 1e-3
            params.append(p)
    return params


def ns_flops(batch: int, rows: int, cols: int, steps: int) -> float:
    """Full-GEMM FLOPs of the textbook algorithm: X·Xᵀ, A·A and P·X per step."""
    m, n = min(rows, cols), max(rows, cols)
    return batch * steps * (2 * m * m * n + 2 * m * m * m + 2 * m * m * n)


def ns_batches(params) -> dict[tuple[int, int], int]:
    batches: dict[tuple[int, int], int] = defaultdict(int)
    for p in params:
        if p.dim() >= 2:
            e, r, c = matrix_shape(p.shape)
            batches[(r, c)] += e
    return batches


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    if not HAS_EXT:
        print("warning: the compiled extension is not loaded; muonext runs its references")

    ours_params = make_params(split_experts=False)
    ours = Muon(ours_params, lr=1e-3, weight_decay=0.1, ns_dtype=torch.bfloat16, track_update_rms=False)
    split_params = make_params(split_experts=True)
    matrices = [p for p in split_params if p.dim() == 2]
    vectors = [p for p in split_params if p.dim() < 2]
    torch_muon = torch.optim.Muon(matrices, lr=1e-3, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    torch_adamw_vec = torch.optim.AdamW(vectors, lr=1e-3, weight_decay=0.1, foreach=True)
    adamw = torch.optim.AdamW(make_params(False), lr=1e-3, weight_decay=0.1, foreach=True)

    def torch_muon_step():
        torch_muon.step()
        torch_adamw_vec.step()

    steps_t = interleaved_medians({"ours": ours.step, "torch": torch_muon_step, "adamw": adamw.step}, args.repeats)
    t_ours, t_torch, t_adamw = steps_t["ours"], steps_t["torch"], steps_t["adamw"]

    steps, schedule = 5, ns_schedule("keller", 5)
    batches = ns_batches(ours_params)
    total_flops = sum(ns_flops(b, r, c, steps) for (r, c), b in batches.items())
    inputs = {k: torch.randn(b, *k).bfloat16() for k, b in batches.items()}

    def plain_bmm():  # the same GEMMs as NS with nothing else: this machine's batched-matmul rate
        for x in inputs.values():
            w = x if x.size(1) <= x.size(2) else x.mT.contiguous()
            for _ in range(steps):
                a = torch.bmm(w, w.mT)
                p = torch.bmm(a, a)
                torch.bmm(p, w)

    per_matrix = [torch.randn(r, c).bfloat16() for (r, c), b in batches.items() for _ in range(b)]
    torch_ns = torch.optim._muon._zeropower_via_newtonschulz
    ns_t = interleaved_medians({
        "ours": lambda: [ops.newton_schulz(x, schedule) for x in inputs.values()],
        "bmm": plain_bmm,
        "torch": lambda: [torch_ns(m, (3.4445, -4.7750, 2.0315), 5, 1e-7) for m in per_matrix],
    }, args.repeats)
    t_ns, t_bmm, t_torch_ns = ns_t["ours"], ns_t["bmm"], ns_t["torch"]

    n_matrix = sum(p.numel() for p in ours_params if p.dim() >= 2)
    print(f"machine: {machine_line()}, {torch.get_num_threads()} threads; extension loaded: {HAS_EXT}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"parameters: {sum(p.numel() for p in ours_params):,} ({n_matrix:,} in matrices: "
          f"{sum(batches.values())} matrices in {len(batches)} shapes)\n")
    print(f"{'optimizer step':34s} {'ms':>9s} {'× torch.optim.Muon':>19s}")
    for name, t in (("muonext Muon (bf16 NS)", t_ours), ("torch.optim.Muon (+AdamW for 1-D)", t_torch),
                    ("torch.optim.AdamW (foreach)", t_adamw)):
        print(f"{name:34s} {t * 1e3:9.1f} {t_torch / t:18.2f}×")
    print(f"\n{'Newton–Schulz (5 steps, bf16)':34s} {'GFLOP/s':>9s} {'of bmm rate':>12s}")
    for name, t in (("batched bmm, same GEMMs (ideal)", t_bmm), ("muonext newton_schulz", t_ns),
                    ("torch.optim.Muon NS (per matrix)", t_torch_ns)):
        print(f"{name:34s} {total_flops / t / 1e9:9.1f} {t_bmm / t:11.0%}")


if __name__ == "__main__":
    main()
