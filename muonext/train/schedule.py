"""Learning-rate schedules as pure functions of the step (the step is the whole scheduler state).

cosine: linear warm-up to 1, then cosine to `min_ratio` at `total`.
wsd:    linear warm-up, constant 1 ("stable"), then a linear decay to `min_ratio` over the last
        `decay_fraction` of the steps (warm-up–stable–decay, as used for Moonlight-style runs).
"""

from __future__ import annotations

import math


def lr_factor(step: int, total: int, warmup: int, kind: str = "cosine", min_ratio: float = 0.1,
              decay_fraction: float = 0.2) -> float:
    """Multiplier of the base lr for optimizer step `step` (0-based: the first update uses step 0)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "cosine":
        span = max(total - warmup, 1)
        progress = min((step - warmup) / span, 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "wsd":
        decay_steps = max(round(total * decay_fraction), 1)
        start = total - decay_steps
        if step < start:
            return 1.0
        progress = min((step - start + 1) / decay_steps, 1.0)
        return 1.0 - (1 - min_ratio) * progress
    raise ValueError(f"unknown schedule {kind!r}; choose cosine or wsd")


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
