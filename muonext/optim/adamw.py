"""The AdamW path of Muon (and of Distributed Muon) for 1-D tensors, embeddings and the head.

Same arithmetic, in the same order, as `torch.optim.AdamW(foreach=True)` so the two agree to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def init_adamw_state(state: dict, param: Tensor) -> None:
    if not state:
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)


@torch.no_grad()
def adamw_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    states: Sequence[dict],
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    want_rms: bool,
) -> list[Tensor] | None:
    """One AdamW step on params sharing the same hyper-parameters (each keeps its own step count).

    Returns, when want_rms, the RMS of each lr-free update direction m̂ / (√v̂ + ε) as 0-dim tensors.
    """
    if not params:
        return [] if want_rms else None
    beta1, beta2 = betas
    exp_avgs = [s["exp_avg"] for s in states]
    exp_avg_sqs = [s["exp_avg_sq"] for s in states]
    steps = [s["step"] for s in states]
    torch._foreach_add_(steps, 1.0)
    step_counts = [s.item() for s in steps]  # CPU scalars: no device sync

    torch._foreach_mul_(list(params), 1.0 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, list(grads), 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, list(grads), list(grads), 1.0 - beta2)

    bias_correction1 = [1.0 - beta1**t for t in step_counts]
    bias_correction2_sqrt = [math.sqrt(1.0 - beta2**t) for t in step_counts]
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(list(params), exp_avgs, denom, [-lr / bc for bc in bias_correction1])
    if not want_rms:
        return None
    directions = torch._foreach_div(exp_avgs, denom)
    torch._foreach_div_(directions, bias_correction1)
    return [n / math.sqrt(max(d.numel(), 1)) for n, d in zip(torch._foreach_norm(directions), directions)]
