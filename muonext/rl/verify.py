"""Answer extraction and exact-value verification: the reward of the math tasks.

The verifier is lenient on form and strict on value. Form: spaces, thousands separators, a leading
``+``, a trailing ``.0``, ``\\boxed{}``, ``$...$``, a final period, the Unicode minus. Value: numbers are
parsed into `fractions.Fraction` and compared exactly, so ``0.5`` equals ``1/2`` and ``\\frac{1}{2}``,
but ``0.33`` is not ``1/3`` and ``1,23`` (not a valid thousands grouping) is not a number at all. A
reward that rounds would let the policy learn to be approximately right.

Extraction order, so a long chain of thought with many numbers is scored by its conclusion:
the last ``Answer: X`` / ``answer is X``, else the last ``\\boxed{X}``, else the last number in the text.
"""

from __future__ import annotations

import re
from fractions import Fraction

# Liberal on purpose (any comma grouping): "1,23" is extracted whole and then rejected by parse_number,
# instead of being read as 1 or 23.
_NUMBER = r"[-+]?(?:\d+(?:,\d+)*(?:\.\d+)?|\.\d+)(?:\s*/\s*[-+]?\d+(?:\.\d+)?)?"
_FRAC = r"[-+]?\s*\\[dt]?frac\s*\{[^{}]*\}\s*\{[^{}]*\}"
_NUMBER_RE = re.compile(rf"{_FRAC}|{_NUMBER}")
_ANSWER_RE = re.compile(r"answer\s*(?:is\s*:?|:|=)\s*([^\n]*)", re.IGNORECASE)
_THOUSANDS_RE = re.compile(r"^[-+]?\d{1,3}(,\d{3})+(\.\d+)?$")


def _boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` (or ``\\fbox{...}``), with balanced inner braces."""
    out = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def _clean(text: str) -> str:
    return text.replace("\u2212", "-").replace("\u2013", "-").replace("$", "").replace("**", "")


def extract_answer(text: str) -> str | None:
    """The final answer as written (not normalised), or None when the text holds no number."""
    text = _clean(text)
    for m in reversed(list(_ANSWER_RE.finditer(text))):
        tail = m.group(1)
        boxed = _boxed_contents(tail)
        candidate = boxed[0] if boxed else tail
        num = _NUMBER_RE.search(candidate)
        if num:
            return num.group(0).strip()
    boxed = _boxed_contents(text)
    if boxed:
        num = _NUMBER_RE.search(boxed[-1])
        return num.group(0).strip() if num else boxed[-1].strip()
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1].strip() if numbers else None


def parse_number(text: str) -> Fraction | None:
    """Exact value of a number written as an integer, decimal, fraction or ``\\frac``; None if not one."""
    s = _clean(text).strip()
    boxed = _boxed_contents(s)
    if boxed:
        s = boxed[-1].strip()
    s = s.rstrip(".").strip()
    m = re.fullmatch(r"([-+]?)\s*\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", s)
    if m:
        num, den = parse_number(m.group(2)), parse_number(m.group(3))
        if num is None or den is None or den == 0:
            return None
        value = num / den
        return -value if m.group(1) == "-" else value
    s = re.sub(r"\s*/\s*", "/", re.sub(r"^([-+])\s+", r"\1", s))  # "- 3 / 4"; but "4 2" stays invalid
    if "," in s:
        if not _THOUSANDS_RE.fullmatch(s):
            return None
        s = s.replace(",", "")
    if not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)(/[-+]?\d+)?", s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(predicted: str, reference: str) -> bool:
    """Whether two written answers have exactly the same value (False if either is not a number)."""
    a, b = parse_number(predicted), parse_number(reference)
    return a is not None and b is not None and a == b


def verify(response: str, reference: str) -> bool:
    """Whether the final answer extracted from `response` equals `reference` exactly."""
    predicted = extract_answer(response)
    return predicted is not None and answers_match(predicted, reference)


def math_reward(response: str, reference: str) -> float:
    """k1.5's binary reward: 1.0 for a correct final answer, else 0.0."""
    return 1.0 if verify(response, reference) else 0.0
