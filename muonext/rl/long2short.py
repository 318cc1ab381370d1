"""Long2short helpers (k1.5 Sec. 2.4): shortest rejection sampling and model merging.

* Shortest rejection sampling: sample n responses per prompt from the long-CoT model and keep the
  shortest correct one as SFT data for the short model.
* Weight merging: average a long-CoT and a short-CoT model, θ = ratio·θ_a + (1 − ratio)·θ_b, which
  k1.5 found to give shorter answers without retraining. Both models must share an architecture; the
  check lists every mismatch at once, because a half-merged model is worse than no model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import torch

P = TypeVar("P")
R = TypeVar("R")


def shortest_correct_index(lengths: Sequence[int], correct: Sequence[bool]) -> int | None:
    """Index of the shortest correct sample (the first on ties), or None when none is correct."""
    if len(lengths) != len(correct):
        raise ValueError(
            f"lengths and correct must have the same size, got {len(lengths)} and {len(correct)}"
        )
    best = None
    for i, (n, ok) in enumerate(zip(lengths, correct)):
        if n < 0:
            raise ValueError(f"lengths must be >= 0, got {n} at index {i}")
        if ok and (best is None or n < lengths[best]):
            best = i
    return best


def shortest_rejection_sampling(
    prompts: Sequence[P],
    responses: Sequence[Sequence[R]],
    lengths: Sequence[Sequence[int]],
    correct: Sequence[Sequence[bool]],
) -> list[tuple[P, R]]:
    """(prompt, shortest correct response) for every prompt that has a correct response."""
    if not len(prompts) == len(responses) == len(lengths) == len(correct):
        raise ValueError(
            f"need one entry per prompt, got {len(prompts)} prompts, {len(responses)} response "
            f"lists, {len(lengths)} length lists, {len(correct)} correctness lists"
        )
    out = []
    for p, (prompt, rs, ls, cs) in enumerate(zip(prompts, responses, lengths, correct)):
        if len(rs) != len(ls):
            raise ValueError(f"prompt {p}: {len(rs)} responses but {len(ls)} lengths")
        i = shortest_correct_index(ls, cs)
        if i is not None:
            out.append((prompt, rs[i]))
    return out


def merge_state_dicts(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], ratio: float
) -> dict[str, torch.Tensor]:
    """ratio·a + (1 − ratio)·b per floating-point tensor, computed in float32 (float64 kept) and cast
    back. Non-floating tensors (counters, masks) must be equal and are copied. Raises ValueError
    listing every missing key and every shape, dtype or value mismatch."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    problems = [f"{k!r} only in a" for k in a if k not in b] + [f"{k!r} only in b" for k in b if k not in a]
    for k in a:
        if k not in b:
            continue
        x, y = a[k], b[k]
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            problems.append(f"{k!r}: not a tensor ({type(x).__name__}, {type(y).__name__})")
        elif x.shape != y.shape:
            problems.append(f"{k!r}: shape {list(x.shape)} vs {list(y.shape)}")
        elif x.dtype != y.dtype:
            problems.append(f"{k!r}: dtype {x.dtype} vs {y.dtype}")
        elif not x.is_floating_point() and not torch.equal(x, y.to(x.device)):
            problems.append(f"{k!r}: non-floating tensors ({x.dtype}) differ and cannot be interpolated")
    if problems:
        raise ValueError(
            f"cannot merge state dicts ({len(problems)} problem(s)):\n  " + "\n  ".join(problems)
        )
    out = {}
    for k, x in a.items():
        if not x.is_floating_point():
            out[k] = x.clone()
            continue
        acc = torch.promote_types(x.dtype, torch.float32)
        y = b[k].to(device=x.device, dtype=acc)
        out[k] = (ratio * x.to(acc) + (1.0 - ratio) * y).to(x.dtype)
    return out
