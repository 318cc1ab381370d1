"""Arithmetic problems with verifiable answers: the math tasks of the k1.5 loop at demo scale.

k1.5 trains on problems whose answers a program can check. Integer arithmetic has that property, needs
no data download, and scales in difficulty by two knobs the curriculum can follow: how many digits the
numbers have and how many operations there are (with parentheses from level 4 on).

Every problem carries two reference solutions with the same reductions, one per line:
`long_solution` is the long chain of thought. Each addition and subtraction is worked digit by digit
before its equation, units first with carries or borrows (`48 + 84: 8+4=12, 4+8+1=13. 48 + 84 = 132`),
and the reductions are wrapped in prose. `short_solution` is the bare equations. A short form with no
steps at all would not do: a small model cannot compute a multi-step answer without writing the steps.
Both end with the same line, ``Answer: <integer>``, which is the format `verify.extract_answer` looks for
first. The long/short pair is what the long2short experiments need for SFT warm-up data.

The column work is what lets the character-level model of the `tiny` RL pipeline (3 layers then) add
and subtract: writing `48 + 84 = 132` at once, its SFT reached 55% on two-digit sums, and with the columns
98% (bench/RESULTS.md, RL run 5). Written in one line, it gets 2 of 116 two-digit products right.

For half of the prompts (another hash) the long solution also works each product by long
multiplication: the multiplicand times each digit of the multiplier, one table fact per step with the
carry added in a step of its own, then the shifted partial products summed column by column. The other
half writes products in one line. The SFT warm start therefore holds two strategies for a product and
the model picks one at the token after `a * b`, about as often each way; which one pays is for RL to
find out from the reward (bench/RESULTS.md, RL run 8).

For 80% of prompts (a hash of the prompt decides) the long solution then re-checks: every step's
equation again, with the column work of its sums and differences (a long multiplication is not
repeated), between "Let me check each step again." and "The steps check out.". This is the overthinking
k1.5's long2short methods exist for: it adds nothing, since the first pass already holds the answer. A
long2short method that learns to leave it out gets shorter at no cost; one that also cuts the column
work loses accuracy (RL run 5). At 60% the greedy model's choice to re-check was close to a coin that a
little RL drift flipped (RL run 8); at 80% it is a habit, as overthinking is.

JSONL problem sets hold one object per line with at least ``prompt``, ``answer`` and ``difficulty``.
"""

from __future__ import annotations

import json
import random
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ANSWER_PREFIX = "Answer: "
PROMPT_TEMPLATE = "What is {expr}?"
# The redundant re-check of some long solutions (see the module docstring): the part long2short removes.
RECHECK_PERCENT = 80
RECHECK_OPEN = "Let me check each step again."
RECHECK_CLOSE = "The steps check out."
# The long multiplication of some long solutions: the strategy RL can learn to prefer (module docstring).
PRODUCT_WORK_PERCENT = 50


@dataclass(frozen=True)
class Level:
    """One difficulty level: `n_ops` operators over numbers of up to `digits` digits."""

    n_ops: int
    digits: int
    ops: str
    parentheses: bool


LEVELS: dict[int, Level] = {
    1: Level(n_ops=1, digits=1, ops="+", parentheses=False),
    2: Level(n_ops=1, digits=2, ops="+-", parentheses=False),
    3: Level(n_ops=2, digits=2, ops="+-*", parentheses=False),
    4: Level(n_ops=3, digits=2, ops="+-*", parentheses=True),
    5: Level(n_ops=4, digits=3, ops="+-*", parentheses=True),
    6: Level(n_ops=5, digits=3, ops="+-*", parentheses=True),
}
MAX_DIFFICULTY = max(LEVELS)
_PRECEDENCE = {"+": 1, "-": 1, "*": 2}


@dataclass(frozen=True)
class Problem:
    """A prompt, its canonical integer answer (as a string) and two solutions that end in that answer."""

    prompt: str
    answer: str
    difficulty: int
    long_solution: str = ""
    short_solution: str = ""


# An expression is an int (a leaf) or a tuple (op, left, right).
Expr = int | tuple


def _render(e: Expr, parent_prec: int = 0, right_of: str = "") -> str:
    """Infix text with only the parentheses the value needs; negative numbers are parenthesised."""
    if isinstance(e, int):
        return f"({e})" if e < 0 else str(e)
    op, left, right = e
    prec = _PRECEDENCE[op]
    text = f"{_render(left, prec)} {op} {_render(right, prec, op)}"
    # a - (b + c) and a - (b - c) need them; a * (b * c) and a + (b + c) do not.
    needs = prec < parent_prec or (prec == parent_prec and right_of == "-")
    return f"({text})" if needs else text


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def evaluate(e: Expr) -> int:
    """The value of an expression tree (the oracle the solutions are checked against in tests)."""
    if isinstance(e, int):
        return e
    op, left, right = e
    return _apply(op, evaluate(left), evaluate(right))


def _reduce_once(e: Expr) -> tuple[Expr, tuple[str, int, int], str]:
    """Reduce the first operator (post-order) whose operands are both numbers; return the new expression,
    the (op, a, b) reduced and the step's equation."""
    op, left, right = e
    if isinstance(left, int) and isinstance(right, int):
        value = _apply(op, left, right)
        return value, (op, left, right), f"{_render(left)} {op} {_render(right)} = {value}"
    if not isinstance(left, int):
        new_left, reduced, step = _reduce_once(left)
        return (op, new_left, right), reduced, step
    new_right, reduced, step = _reduce_once(right)
    return (op, left, new_right), reduced, step


def _column_add(x: int, y: int) -> str:
    """x + y (x, y >= 0) column by column, units first: '8+4=12, 4+8+1=13' (each sum with the carry in)."""
    dx, dy = str(x)[::-1], str(y)[::-1]
    cols, carry = [], 0
    for i in range(max(len(dx), len(dy))):
        a, b = int(dx[i]) if i < len(dx) else 0, int(dy[i]) if i < len(dy) else 0
        total = a + b + carry
        cols.append(f"{a}+{b}+{carry}={total}" if carry else f"{a}+{b}={total}")
        carry = total // 10
    return ", ".join(cols)


def _column_sub(x: int, y: int) -> str:
    """x − y (x >= y >= 0) column by column, units first: '14-8=6 borrow, 7-4=3' (a borrowed ten is
    written into the digit and taken from the next one)."""
    dx, dy = str(x)[::-1], str(y)[::-1]
    cols, borrow = [], 0
    for i in range(len(dx)):
        a, b = int(dx[i]) - borrow, int(dy[i]) if i < len(dy) else 0
        borrow = int(a < b)
        cols.append(f"{a + 10}-{b}={a + 10 - b} borrow" if borrow else f"{a}-{b}={a - b}")
    return ", ".join(cols)


def _times_digit(x: int, d: int) -> str:
    """x * d (x >= 0, d one digit) column by column, units first: '7*6=42, 4*6=24, 24+4=28' (the carry is
    added in a step of its own, so no step needs more than one table fact)."""
    cols, carry = [], 0
    for ch in str(x)[::-1]:
        v = int(ch) * d
        cols.append(f"{ch}*{d}={v}, {v}+{carry}={v + carry}" if carry else f"{ch}*{d}={v}")
        carry = (v + carry) // 10
    return ", ".join(cols)


def _long_multiply(x: int, y: int) -> str:
    """x * y (x, y >= 0; y the shorter) as long multiplication: x times each non-zero digit of y, shifted,
    then the partial products summed column by column ('47 * 86: 47 * 6: …, so 282; 47 * 8: …, so 376;
    47 * 80 = 3760; 282 + 3760: 2+0=2, …')."""
    if y < 10:
        return f"{x} * {y}: {_times_digit(x, y)}"
    parts, partials = [], []
    for i, ch in enumerate(str(y)[::-1]):
        if ch == "0":
            continue
        p = x * int(ch)
        parts.append(f"{x} * {ch}: {_times_digit(x, int(ch))}, so {p}")
        if i:
            parts.append(f"{x} * {ch}{'0' * i} = {p * 10**i}")
        partials.append(p * 10**i)
    total = partials[0]
    for j, p in enumerate(partials[1:], 2):
        parts.append(f"{total} + {p}: {_column_add(total, p)}" + (f", so {total + p}" if j < len(partials) else ""))
        total += p
    return f"{x} * {y}: " + "; ".join(parts)


def _product_work(a: int, b: int) -> str:
    """The long multiplication of a * b, signs first ('(-12) * 34 = -(12 * 34); 12 * 34: …'); the operand
    with more digits is the multiplicand, the left one on a tie."""
    x, y = abs(a), abs(b)
    prefix = ""
    if a < 0 or b < 0:
        magnitude = f"{x} * {y}" if a < 0 and b < 0 else f"-({x} * {y})"
        prefix = f"{_render(a)} * {_render(b)} = {magnitude}; "
    if len(str(y)) > len(str(x)):
        x, y = y, x
    return prefix + _long_multiply(x, y)


def column_work(op: str, a: int, b: int, products: bool = False) -> str:
    """The digit-by-digit work before `a op b = …` in the long solution: '' for one-digit operands, and
    for products unless `products`; signs are handled first ('15 - 75 = -(75 - 15); 75 - 15: 5-5=0,
    7-1=6')."""
    if max(abs(a), abs(b)) < 10 or (op == "*" and not products):
        return ""
    if op == "*":
        return _product_work(a, b)
    head = f"{_render(a)} {op} {_render(b)}"
    b = b if op == "+" else -b  # a − b = a + (−b): one signed addition
    if a >= 0 and b >= 0:
        prefix = "" if op == "+" else f"{head} = {a} + {b}; "
        return f"{prefix}{a} + {b}: {_column_add(a, b)}"
    if a < 0 and b < 0:
        return f"{head} = -({-a} + {-b}); {-a} + {-b}: {_column_add(-a, -b)}"
    x, y = (a, -b) if a >= 0 else (b, -a)  # the sum is x − y with x, y >= 0
    if x >= y:
        prefix = "" if (op == "-" and a >= 0) else f"{head} = {x} - {y}; "
        return f"{prefix}{x} - {y}: {_column_sub(x, y)}"
    return f"{head} = -({y} - {x}); {y} - {x}: {_column_sub(y, x)}"


def works_products(prompt: str) -> bool:
    """Whether the long solution of `prompt` works its products by long multiplication: for
    PRODUCT_WORK_PERCENT % of prompts, by a hash of the prompt (another one than `rechecks`')."""
    return zlib.crc32(b"products " + prompt.encode()) % 100 < PRODUCT_WORK_PERCENT


def rechecks(prompt: str) -> bool:
    """Whether the long solution of `prompt` re-checks its steps: for RECHECK_PERCENT % of prompts, by a
    hash of the prompt (so the problem stream does not change and the choice looks random to the model)."""
    return zlib.crc32(prompt.encode()) % 100 < RECHECK_PERCENT


_PRODUCT_LINE = re.compile(r"\(?(-?\d+)\)? \* \(?(-?\d+)\)?[:; =]")


def product_steps(response: str) -> tuple[int, int]:
    """(worked, one-line): how many of a response's product steps with a two-digit operand it works by
    long multiplication and how many it writes in one line, before any re-check. Which of the two
    strategies of the long solutions a model uses (bench/rl_arith.py)."""
    worked = one_line = 0
    for line in response.split(RECHECK_OPEN)[0].splitlines():
        m = _PRODUCT_LINE.match(line)
        if m and max(abs(int(m[1])), abs(int(m[2]))) >= 10:
            worked += ": " in line
            one_line += ": " not in line
    return worked, one_line


def _solutions(e: Expr, recheck: bool, products: bool = False) -> tuple[str, str, int]:
    """(long, short, value). Both solutions make the same reductions, one per line: the long one works
    each addition and subtraction digit by digit (and each product, when `products`), wraps the equations
    in prose and, when `recheck`, repeats every step's equation and the work of its sums and differences
    before the answer line; the short one is the bare equations.

    The long solution states the expression as every step re-writes it ('the expression is …'): after a
    long multiplication the model copies the rest of the expression from far back, and with the same cue
    before every copy it finds it (with 'We compute E step by step.' first and '…, so the expression
    becomes …' after the step, half of the SFT model's wrong d3 answers wrote the product's leading
    digits for the other operand: '54 + 46 * 57' became '26 + 2622')."""
    long_lines = [f"The expression is {_render(e)}."]
    short_lines, checks = [], []
    while not isinstance(e, int):
        e, (op, a, b), step = _reduce_once(e)
        work = column_work(op, a, b, products)
        line = f"{step}, so the expression is {_render(e)}." if not isinstance(e, int) else f"{step}."
        long_lines.append(f"{work}. {line}" if work else line)
        # a long multiplication is too long to repeat (it would double the longest solutions)
        checks.append(f"{work}. {step}." if work and op != "*" else f"{step}.")
        short_lines.append(step)
    answer_line = f"{ANSWER_PREFIX}{e}"
    long_lines.append(f"So the answer is {e}.")
    if recheck:
        long_lines += [RECHECK_OPEN, *checks, RECHECK_CLOSE]
    long_lines.append(answer_line)
    return "\n".join(long_lines), "\n".join(short_lines + [answer_line]), e


def _number(rng: random.Random, digits: int) -> int:
    """A number with 1..`digits` digits, biased towards the full width."""
    d = digits if rng.random() < 0.7 else rng.randint(1, digits)
    return rng.randint(0 if d == 1 else 10 ** (d - 1), 10**d - 1)


def _by_precedence(numbers: list[int], ops: list[str]) -> Expr:
    """Tree of a flat `a op b op c ...` with the usual precedence (* before +/-, left to right)."""
    terms: list[Expr] = [numbers[0]]
    joins: list[str] = []
    for op, n in zip(ops, numbers[1:]):
        if op == "*":
            terms[-1] = ("*", terms[-1], n)
        else:
            joins.append(op)
            terms.append(n)
    tree = terms[0]
    for op, t in zip(joins, terms[1:]):
        tree = (op, tree, t)
    return tree


def _random_tree(rng: random.Random, n_ops: int, level: Level) -> Expr:
    if n_ops == 0:
        return _number(rng, level.digits)
    left_ops = rng.randint(0, n_ops - 1)
    op = rng.choice(level.ops)
    return (op, _random_tree(rng, left_ops, level), _random_tree(rng, n_ops - 1 - left_ops, level))


def generate_problem(rng: random.Random, difficulty: int) -> Problem:
    """One problem of the given level, drawn from `rng` (all randomness comes from it)."""
    if difficulty not in LEVELS:
        raise ValueError(f"difficulty must be one of {sorted(LEVELS)}, got {difficulty}")
    level = LEVELS[difficulty]
    if level.parentheses:
        tree = _random_tree(rng, level.n_ops, level)
    else:
        numbers = [_number(rng, level.digits) for _ in range(level.n_ops + 1)]
        tree = _by_precedence(numbers, [rng.choice(level.ops) for _ in range(level.n_ops)])
    prompt = PROMPT_TEMPLATE.format(expr=_render(tree))
    long_solution, short_solution, value = _solutions(tree, rechecks(prompt), works_products(prompt))
    assert value == evaluate(tree)
    return Problem(
        prompt=prompt,
        answer=str(value),
        difficulty=difficulty,
        long_solution=long_solution,
        short_solution=short_solution,
    )


def generate_problems(n: int, difficulties: int | Sequence[int], seed: int) -> list[Problem]:
    """`n` problems; difficulty `difficulties` or cycled through the given levels. Same seed, same list."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    levels = [difficulties] if isinstance(difficulties, int) else list(difficulties)
    if not levels:
        raise ValueError("difficulties must name at least one level")
    rng = random.Random(seed)
    return [generate_problem(rng, levels[i % len(levels)]) for i in range(n)]


# ----------------------------------------------------------------------------------------------- JSONL
_REQUIRED = {"prompt": str, "answer": str, "difficulty": int}
_OPTIONAL = {"long_solution": str, "short_solution": str}


def save_problems(path: str | Path, problems: Iterable[Problem]) -> None:
    """Write one JSON object per line (solutions included when present)."""
    with open(path, "w", encoding="utf-8") as f:
        for p in problems:
            row = {"prompt": p.prompt, "answer": p.answer, "difficulty": p.difficulty}
            row.update({k: getattr(p, k) for k in _OPTIONAL if getattr(p, k)})
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def load_problems(path: str | Path) -> list[Problem]:
    """Read a JSONL problem set; blank lines are skipped; a bad row raises ValueError naming its line."""
    problems = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")  # noqa: TRY004
            missing = [k for k in _REQUIRED if k not in row]
            if missing:
                raise ValueError(f"{where}: missing field(s) {missing}; a row needs {list(_REQUIRED)}")
            if isinstance(row["answer"], (int, float)) and not isinstance(row["answer"], bool):
                row["answer"] = str(row["answer"])
            for key, typ in {**_REQUIRED, **_OPTIONAL}.items():
                if key in row and (not isinstance(row[key], typ) or isinstance(row[key], bool)):
                    raise ValueError(
                        f"{where}: field {key!r} must be {typ.__name__}, "
                        f"got {type(row[key]).__name__} {row[key]!r}"
                    )
            if row["difficulty"] < 1:
                raise ValueError(f"{where}: difficulty must be >= 1, got {row['difficulty']}")
            problems.append(Problem(**{k: row[k] for k in (*_REQUIRED, *_OPTIONAL) if k in row}))
    return problems
