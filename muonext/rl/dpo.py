"""DPO for long2short (k1.5 Sec. 2.4): prefer the shortest correct answer over wrong and long ones.

The loss is standard DPO (Rafailov et al., 2023) against a frozen reference model:

    L = −log σ(β·((log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))))

k1.5 builds the pairs from the long-CoT model's own n samples per prompt: the chosen response is the
shortest correct one; rejected are every wrong one and every correct one at least `ratio` (1.5) times
longer than the chosen. Correct answers only slightly longer are left out: they are not worse enough
to teach brevity and would mostly teach noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .long2short import shortest_correct_index


def dpo_loss(
    logp_chosen: torch.Tensor,
    logp_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean DPO loss over pairs (all inputs (P,) sequence log-probs; the reference ones are constants).

    Stats: `accuracy` (share of pairs whose implicit reward prefers the chosen), `margin` (mean
    β-scaled reward difference), and the mean implicit rewards of chosen and rejected.
    """
    shapes = {t.shape for t in (logp_chosen, logp_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1 or logp_chosen.dim() != 1:
        raise ValueError(
            f"all four log-prob tensors must have the same 1-D shape, got {sorted(map(list, shapes))}"
        )
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    reward_c = beta * (logp_chosen - ref_chosen.detach())
    reward_r = beta * (logp_rejected - ref_rejected.detach())
    margin = reward_c - reward_r
    loss = -F.logsigmoid(margin).mean()
    with torch.no_grad():
        stats = {
            "accuracy": (margin > 0).float().mean().item(),
            "margin": margin.mean().item(),
            "reward_chosen": reward_c.mean().item(),
            "reward_rejected": reward_r.mean().item(),
        }
    return loss, stats


def build_dpo_pairs(
    lengths: Sequence[int], correct: Sequence[bool], ratio: float = 1.5
) -> list[tuple[int, int]]:
    """(chosen, rejected) index pairs among one prompt's samples; [] when none is correct or none is
    rejected. The chosen is the shortest correct sample (the first on ties)."""
    if ratio < 1.0:
        raise ValueError(f"ratio must be >= 1 (rejected correct answers are the longer ones), got {ratio}")
    chosen = shortest_correct_index(lengths, correct)
    if chosen is None:
        return []
    limit = ratio * lengths[chosen]
    return [
        (chosen, j)
        for j, (n, ok) in enumerate(zip(lengths, correct))
        if j != chosen and (not ok or n >= limit)
    ]
