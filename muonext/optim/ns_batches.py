"""Batching Newton–Schulz: which matrices can share one batch, and one grouped call per schedule."""

from __future__ import annotations

from collections import defaultdict

from torch import Tensor

from .. import ops
from .coefficients import ns_schedule
from .shapes import ns_flops

__all__ = ["batch_flops", "newton_schulz_batches", "ns_key"]


def ns_key(group: dict, shape: tuple[int, int]) -> tuple:
    """(schedule, eps, dtype, rows, cols) of a param group's matrices of `shape`: matrices with equal
    keys share one NS batch."""
    return (
        tuple(ns_schedule(group["ns_coefficients"], group["ns_steps"])),
        group["ns_eps"],
        group["ns_dtype"],
        *shape,
    )


def newton_schulz_batches(batches: list[tuple[tuple, Tensor]]) -> list[Tensor]:
    """NS of (key, (count, rows, cols) batch) pairs: one newton_schulz_grouped call per (schedule, eps,
    dtype), so on CUDA every shape shares each step's launches."""
    grouped: dict[tuple, list[int]] = defaultdict(list)
    for i, (key, _) in enumerate(batches):
        grouped[key[:3]].append(i)
    results: list[Tensor | None] = [None] * len(batches)
    for (schedule, eps, _), idx in grouped.items():
        for i, out in zip(idx, ops.newton_schulz_grouped([batches[i][1] for i in idx], schedule, eps)):
            results[i] = out
    return results


def batch_flops(batches: list[tuple[tuple, Tensor]]) -> int:
    """Multiply-adds `newton_schulz_batches` spends on these batches (every step of each schedule)."""
    return sum(len(key[0]) * batch.shape[0] * ns_flops(key[3], key[4]) for key, batch in batches)
