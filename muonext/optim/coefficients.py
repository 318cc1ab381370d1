"""Newton–Schulz coefficient schedules: data, one (a, b, c) per step.

One step maps X ↦ a·X + b·(X·Xᵀ)·X + c·(X·Xᵀ)²·X, i.e. each singular value σ ↦ aσ + bσ³ + cσ⁵.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Triple = tuple[float, float, float]

# Keller Jordan's quintic: maximal slope at 0 while staying in a band around 1 (~[0.7, 1.2]).
KELLER: Triple = (3.4445, -4.7750, 2.0315)

# Polar Express (Amsel et al., 2025, arXiv 2505.16932), the 5-step schedule used by modded-nanogpt.
# It assumes the input was normalised by (1 + POLAR_EXPRESS_SAFETY)·‖X‖_F; that factor is folded into
# the first triple below (σ ↦ σ/s turns (a, b, c) into (a/s, b/s³, c/s⁵)), so every schedule here
# works on the plain Frobenius normalisation.
POLAR_EXPRESS_SAFETY = 0.02
_POLAR_EXPRESS_RAW: tuple[Triple, ...] = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def _fold_safety(triple: Triple, safety: float) -> Triple:
    s = 1.0 + safety
    a, b, c = triple
    return (a / s, b / s**3, c / s**5)


POLAR_EXPRESS: tuple[Triple, ...] = (_fold_safety(_POLAR_EXPRESS_RAW[0], POLAR_EXPRESS_SAFETY),) + _POLAR_EXPRESS_RAW[1:]

NAMED_SCHEDULES = ("keller", "polar_express")


def ns_schedule(coefficients: str | Sequence[Sequence[float]], steps: int) -> list[Triple]:
    """The per-step (a, b, c) list for `steps` Newton–Schulz steps.

    "keller" repeats Keller's quintic; "polar_express" takes the first `steps` Polar Express triples and
    repeats the last beyond 5; an explicit list of (a, b, c) is used as given (a single triple is repeated).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"ns_steps must be a positive integer, got {steps!r}")
    if isinstance(coefficients, str):
        if coefficients == "keller":
            return [KELLER] * steps
        if coefficients == "polar_express":
            pe = list(POLAR_EXPRESS)
            return pe[:steps] + [pe[-1]] * max(0, steps - len(pe))
        raise ValueError(f"ns_coefficients must be one of {NAMED_SCHEDULES} or a list of (a, b, c), got {coefficients!r}")
    triples = _validate_triples(coefficients)
    if len(triples) == 1:
        return triples * steps
    if len(triples) != steps:
        raise ValueError(
            f"ns_coefficients lists {len(triples)} steps but ns_steps={steps}; pass ns_steps={len(triples)} "
            "(or a single (a, b, c) to repeat)"
        )
    return triples


def _validate_triples(coefficients) -> list[Triple]:
    try:
        items = list(coefficients)
    except TypeError:
        raise TypeError(f"ns_coefficients must be a name or a list of (a, b, c), got {coefficients!r}") from None
    if not items:
        raise ValueError("ns_coefficients is an empty list")
    triples = []
    for i, item in enumerate(items):
        try:
            values = tuple(float(v) for v in item)
        except (TypeError, ValueError):
            raise ValueError(f"ns_coefficients[{i}] must be three numbers (a, b, c), got {item!r}") from None
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"ns_coefficients[{i}] must be three finite numbers (a, b, c), got {item!r}")
        triples.append(values)
    return triples


def singular_value_map(schedule: Sequence[Triple], sigma: float) -> float:
    """What the schedule does to one singular value of the normalised input (exact arithmetic)."""
    for a, b, c in schedule:
        sigma = a * sigma + b * sigma**3 + c * sigma**5
    return sigma
