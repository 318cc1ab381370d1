"""How Muon sees a parameter as matrices, what Newton–Schulz costs on one, and how matrices are
shared out between ranks (used by every optimizer module, so none of them imports another for it)."""

from __future__ import annotations

import math

import torch

__all__ = ["balanced_owners", "matrix_shape", "ns_flops"]


def matrix_shape(shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
    """(batch, rows, cols) of the matrices Muon sees in a tensor of this shape."""
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    if len(shape) == 3:
        return shape[0], shape[1], shape[2]
    return 1, shape[0], math.prod(shape[1:])


def ns_flops(rows: int, cols: int) -> int:
    """Multiply-adds of one Newton–Schulz step on a rows × cols matrix (wide orientation m ≤ n):
    Gram m·m·n, its square m·m·m, the product m·m·n."""
    m, n = min(rows, cols), max(rows, cols)
    return 2 * m * m * n + m * m * m


def balanced_owners(costs: list[int], held: list[dict[int, int]], n: int, slack: float = 1.1) -> list[int]:
    """The owner rank of each unit of NS work: largest cost first (LPT); a unit goes to the rank holding
    the biggest piece of it (`held[i]`: rank -> amount) while that keeps the rank under
    slack × (total / n), else to the least-loaded rank. Deterministic: every rank computes the same."""
    target = slack * sum(costs) / n
    loads = [0] * n
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        by_piece = sorted((r for r in held[i] if held[i][r] > 0), key=lambda r: (-held[i][r], r))
        owner = next((r for r in by_piece if loads[r] + costs[i] <= target), None)
        if owner is None:
            owner = min(range(n), key=lambda r: (loads[r], r not in by_piece, r))
        owners[i] = owner
        loads[owner] += costs[i]
    return owners
