"""Norms over parameters that may be DTensors on different meshes (dense layers on one, experts on
another), where torch's `clip_grad_norm_` would need them on one mesh: one all_reduce of local sums of
squares, each element counted once however many ranks replicate it."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor

from ..optim.dtensor_params import is_dtensor, local, replication

__all__ = ["clip_grad_norm_", "squared_sums"]


@torch.no_grad()
def squared_sums(tensors: list[Tensor]) -> Tensor:
    """Σx² of each whole tensor (float64, on the CPU). Plain tensors count as replicated on every rank;
    with no DTensor among them nothing is communicated."""
    if not tensors:
        return torch.zeros(0, dtype=torch.float64)
    device = local(tensors[0]).device
    sums = torch.stack(
        [
            local(t).double().pow(2).sum()
            if local(t).numel()
            else torch.zeros((), dtype=torch.float64, device=device)
            for t in tensors
        ]
    )
    if any(is_dtensor(t) for t in tensors):
        sums /= torch.tensor([float(replication(t)) for t in tensors], dtype=torch.float64, device=device)
        dist.all_reduce(sums)
    return sums.cpu()


@torch.no_grad()
def clip_grad_norm_(params: Iterable[Tensor], max_norm: float) -> float:
    """Scales every gradient by min(1, max_norm / total norm) in place; returns the total norm (of all
    gradients together, whole tensors)."""
    grads = [p.grad for p in params if p.grad is not None]
    total = math.sqrt(float(squared_sums(grads).sum()))
    if total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads:
            local(g).mul_(scale)
    return total
