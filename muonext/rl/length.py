"""k1.5's length reward: among a prompt's k samples, shorter correct answers are worth more.

Long chains of thought grow during RL ("overthinking"). k1.5 (Sec. 2.3.3) adds, per prompt, a reward
that ranks the k responses by length:

    λ_i = 0.5 − (len_i − min_len) / (max_len − min_len)
    reward_i = λ_i if response i is correct else min(0, λ_i)

A wrong answer is never rewarded for being short (only penalised for being long), so the policy cannot
buy reward by answering quickly and wrongly. When all lengths are equal there is no ranking: all 0.
k1.5 turns it on only after a warm-up, because penalising length from the start slows early training;
`LengthPenalty` carries the weight and the warm-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def _check(lengths: Sequence[int], correct: Sequence[bool]) -> None:
    if len(lengths) != len(correct):
        raise ValueError(
            f"lengths and correct must have the same size, got {len(lengths)} and {len(correct)}"
        )
    bad = [(i, n) for i, n in enumerate(lengths) if n < 0]
    if bad:
        raise ValueError(f"lengths must be >= 0; negative at (index, length) {bad[:5]}")


def length_reward(lengths: Sequence[int], correct: Sequence[bool]) -> list[float]:
    """Length reward of the k samples of one prompt (an empty list gives an empty list)."""
    _check(lengths, correct)
    if not lengths:
        return []
    lo, hi = min(lengths), max(lengths)
    if hi == lo:
        return [0.0] * len(lengths)
    out = []
    for n, ok in zip(lengths, correct):
        lam = 0.5 - (n - lo) / (hi - lo)
        out.append(lam if ok else min(0.0, lam))
    return out


@dataclass(frozen=True)
class LengthPenalty:
    """`weight · length_reward` from iteration `warmup_iters` on (0 before), to add to the task reward."""

    weight: float
    warmup_iters: int = 0

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"LengthPenalty.weight must be >= 0, got {self.weight}")
        if self.warmup_iters < 0:
            raise ValueError(f"LengthPenalty.warmup_iters must be >= 0, got {self.warmup_iters}")

    def active(self, iteration: int) -> bool:
        return self.weight > 0 and iteration >= self.warmup_iters

    def __call__(self, lengths: Sequence[int], correct: Sequence[bool], iteration: int) -> list[float]:
        """Weighted length reward of one prompt's samples at `iteration` (validated even when off)."""
        _check(lengths, correct)
        if not self.active(iteration):
            return [0.0] * len(lengths)
        return [self.weight * r for r in length_reward(lengths, correct)]

    def batched(
        self, lengths: Sequence[int], correct: Sequence[bool], group_size: int, iteration: int
    ) -> list[float]:
        """Same over a flat batch of prompts × `group_size` samples, prompt-major (sample j of prompt p
        at index p·group_size + j), the layout `pmd_loss(group_size=...)` uses."""
        _check(lengths, correct)
        if group_size <= 0 or len(lengths) % group_size:
            raise ValueError(f"batch of {len(lengths)} is not a multiple of group_size={group_size}")
        out: list[float] = []
        for s in range(0, len(lengths), group_size):
            out += self(lengths[s : s + group_size], correct[s : s + group_size], iteration)
        return out
