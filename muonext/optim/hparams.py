"""Validation of Muon's hyper-parameters (shared by Muon and DistributedMuon): every message names
the argument and says what it must be."""

from __future__ import annotations

import math
from numbers import Real

import torch

from .coefficients import ns_schedule

ADJUST_LR_MODES = ("match_rms_adamw", "original", "spectral", "none")
NS_DTYPES = (torch.bfloat16, torch.float32, torch.float64)


def _number(name: str, value, *, low: float = -math.inf, low_inclusive: bool = True, high: float = math.inf,
            high_inclusive: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    ok_low = v >= low if low_inclusive else v > low
    ok_high = v <= high if high_inclusive else v < high
    if not math.isfinite(v) or not ok_low or not ok_high:
        lo = "[" if low_inclusive else "("
        hi = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be finite and in {lo}{low}, {high}{hi}, got {value!r}")


def validate_group(group: dict) -> None:
    """Raises ValueError/TypeError naming the first invalid hyper-parameter of a param group."""
    _number("lr", group["lr"], low=0.0)
    _number("weight_decay", group["weight_decay"], low=0.0)
    _number("momentum", group["momentum"], low=0.0, high=1.0, high_inclusive=False)
    if not isinstance(group["nesterov"], bool):
        raise TypeError(f"nesterov must be a bool, got {group['nesterov']!r}")
    ns_schedule(group["ns_coefficients"], group["ns_steps"])
    if group["adjust_lr"] not in ADJUST_LR_MODES:
        raise ValueError(f"adjust_lr must be one of {ADJUST_LR_MODES}, got {group['adjust_lr']!r}")
    _number("rms_target", group["rms_target"], low=0.0, low_inclusive=False)
    if group["ns_dtype"] not in NS_DTYPES:
        raise TypeError(f"ns_dtype must be one of {NS_DTYPES}, got {group['ns_dtype']!r}")
    betas = group["adamw_betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"adamw_betas must be a pair (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        _number(f"adamw_betas[{i}]", beta, low=0.0, high=1.0, high_inclusive=False)
    _number("adamw_eps", group["adamw_eps"], low=0.0, low_inclusive=False)
    _number("ns_eps", group["ns_eps"], low=0.0)
    if group["use_muon"] is not None and not isinstance(group["use_muon"], bool):
        raise TypeError(f"use_muon must be True, False or None (decide per parameter), got {group['use_muon']!r}")


def update_scale(adjust_lr: str, rms_target: float, rows: int, cols: int) -> float:
    """s(A, B): the factor on the learning rate of an orthogonalised (rows × cols) update."""
    if adjust_lr == "match_rms_adamw":
        return rms_target * math.sqrt(max(rows, cols))
    if adjust_lr == "original":
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr == "spectral":
        return math.sqrt(rows / cols)
    return 1.0
