"""Small building blocks: the decode-aware Linear, RMSNorm and the dense SwiGLU MLP (dense layers and
shared experts).

Legend: N tokens (any leading shape), D hidden_size, I intermediate size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops

# Up to this many rows (tokens; RL rollouts decode 64 at once) the skinny CPU kernel is at least as fast as
# MKL's sgemm (bench/RESULTS.md, model throughput run E).
SKINNY_MAX_ROWS = 64


def fast_cpu_path(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """fp32 on a CPU that runs the extension's AVX-512 decode kernels, and no autograd (the kernels have no
    backward; decoding runs under inference_mode)."""
    return (
        x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.device.type == "cpu"
        and ops.cpu_fast_kernels()
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


def use_skinny(x: torch.Tensor, weight: torch.Tensor, rows: int) -> bool:
    """Whether a product of `rows` rows of x with weight goes to the skinny GEMM kernel."""
    return rows <= SKINNY_MAX_ROWS and fast_cpu_path(x, weight)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear(x, weight), through the skinny kernel for the few rows of a decode step."""
    if use_skinny(x, weight, x.numel() // max(x.shape[-1], 1)):
        return ops.skinny_linear(x, weight)
    return F.linear(x, weight)


class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict keys) whose decode steps use the skinny kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = linear(x, self.weight)
        return y if self.bias is None else y + self.bias


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 and cast back before the weight (as transformers)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast_cpu_path(x, self.weight):
            return ops.rms_norm_rows(x, self.weight, self.eps)
        if x.dtype == torch.float32 or x.dtype == torch.float64:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


class MLP(nn.Module):
    """down(silu(gate(x)) * up(x)); x (N, D) -> (N, D). Names match transformers' DeepseekV3MLP."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
