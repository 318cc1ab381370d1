"""Repeat detection (k1.5 Sec. 2.6.1): stop a rollout that has fallen into a loop.

A policy sometimes degenerates into repeating the same phrase until the length limit, which wastes the
rollout budget and, with partial rollouts, would be carried from iteration to iteration. k1.5 detects
such repetition early, ends the trajectory and may penalise it. Here a sequence is "degenerate" when it
ends in one block of n tokens (min_ngram ≤ n ≤ max_ngram) repeated at least `min_repeats` times in a
row, covering at least `min_span` tokens (so "the the" or a run of three spaces is not a loop).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Repetition:
    """The loop found at the end of a sequence: block size and how many times it repeats."""

    ngram: int
    repeats: int

    @property
    def span(self) -> int:
        return self.ngram * self.repeats


def _tail_repeats(tokens: Sequence[int], n: int) -> int:
    """How many times the last n-gram repeats back to back at the end of `tokens` (≥ 1 if len ≥ n)."""
    length = len(tokens)
    if length < n:
        return 0
    i = length - n  # tokens[i:] is one copy; extend while tokens[j] == tokens[j + n]
    while i > 0 and tokens[i - 1] == tokens[i - 1 + n]:
        i -= 1
    return (length - i) // n


@dataclass(frozen=True)
class RepeatDetector:
    """Callable: `detector(tokens)` → the `Repetition` found, or None. `penalty` is the reward the
    trainer gives a trajectory stopped for repetition (k1.5 penalises them; 0 disables)."""

    min_ngram: int = 1
    max_ngram: int = 64
    min_repeats: int = 4
    min_span: int = 32
    penalty: float = -1.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {self.min_ngram} and {self.max_ngram}")
        if self.min_repeats < 2:
            raise ValueError(
                f"min_repeats must be >= 2 (one copy is not a repetition), got {self.min_repeats}"
            )
        if self.min_span < 0:
            raise ValueError(f"min_span must be >= 0, got {self.min_span}")

    def __call__(self, tokens: Sequence[int]) -> Repetition | None:
        """The smallest block size that qualifies (the loop's period), or None."""
        for n in range(self.min_ngram, min(self.max_ngram, len(tokens) // self.min_repeats) + 1):
            reps = _tail_repeats(tokens, n)
            if reps >= self.min_repeats and n * reps >= self.min_span:
                return Repetition(ngram=n, repeats=reps)
        return None


def ends_in_repetition(
    tokens: Sequence[int], min_ngram: int = 1, max_ngram: int = 64, min_repeats: int = 4, min_span: int = 32
) -> bool:
    """Whether `tokens` ends in a degenerate repetition (see `RepeatDetector`)."""
    return RepeatDetector(min_ngram, max_ngram, min_repeats, min_span)(tokens) is not None
