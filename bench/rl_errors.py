"""Where wrong answers go wrong (a script): the first failing step of each wrong greedy response.

    nice -n 5 .venv/bin/python bench/rl_errors.py RUN_DIR --stages sft,rl --difficulty 3

For the held-out problems of one level it decodes each finished stage's model greedily, as the
pipeline's evaluation does. It walks each wrong response's first pass (before any re-check) line by line
and names the first thing that fails:
- "table fact": a one-digit product of a long multiplication (`7*8=54`);
- "carry add": adding the carry inside a long multiplication (`35+5=30`);
- "column +" / "column -": one column of a worked sum or difference; the sums of partial products count;
- "worked result" / "one-line result": the step's equation disagrees with its value, after the column work
  or with none (a product written in one line);
- "copy": every computation on the line holds, but the expression it rewrites has another value;
- "answer": the answer line disagrees with a right expression.
It also counts the responses by how they write products (tasks.product_steps) and whether they are right:
the strategy RL can switch.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from muonext.rl.config import PipelineConfig
from muonext.rl.pipeline import Pipeline
from muonext.rl.stages import sample_responses
from muonext.rl.tasks import RECHECK_OPEN, product_steps
from muonext.rl.verify import verify

# one column or table fact: `8+4=12`, `2+4+1=7`, `13-5=8`, `7*8=56`; not inside a longer number
_SMALL = re.compile(r"(?<![\d)])(\d+)([+\-*])(\d+)(?:\+(\d+))?=(-?\d+)")
# a step's equation, `47 * 86 = 4042,`; not a rewrite such as `(-51) + 50 = 50 - 51;`
_EQUATION = re.compile(r"\(?(-?\d+)\)? ([+\-*]) \(?(-?\d+)\)? = (-?\d+)(?=[.,;]|$)")
_EXPRESSION = re.compile(r"expression is (.+?)\.$")
_INTEGER_EXPRESSION = re.compile(r"[\d()+\-* ]+")


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _value(expr: str) -> int | None:
    """The value of a rewritten expression, or None when it is not an integer expression."""
    # model output: digits, + - * and parentheses only, and no `**` (a power can take forever)
    if not _INTEGER_EXPRESSION.fullmatch(expr) or "**" in expr:
        return None
    try:
        return eval(expr, {"__builtins__": {}})
    except (SyntaxError, RecursionError, MemoryError):
        return None


def _column_kind(op: str, a: str, b: str, carry: str, in_product: bool) -> str:
    """A wrong one-digit step: a table fact, a carry added to one (`35+5=…`), or a column."""
    if op == "*":
        return "table fact"
    if op == "+" and in_product and not carry and len(a) == 2 and len(b) == 1:
        return "carry add"
    return f"column {op}"


def _line_error(line: str) -> str | None:
    """The first computation on a line that is wrong, by kind, or None."""
    in_product = " * " in line.split(":")[0]
    for a, op, b, carry, result in _SMALL.findall(line):
        if carry and op != "+":
            continue
        if _apply(op, int(a), int(b)) + int(carry or 0) != int(result):
            return _column_kind(op, a, b, carry, in_product)
    for a, op, b, result in _EQUATION.findall(line):
        if _apply(op, int(a), int(b)) != int(result):
            return "worked result" if ":" in line else "one-line result"
    return None


def first_error(response: str, answer: str) -> str:
    """Where a wrong response's first pass first fails (see the module docstring)."""
    for line in response.split(RECHECK_OPEN)[0].splitlines():
        kind = _line_error(line)
        if kind is not None:
            return kind
        m = _EXPRESSION.search(line)
        value = _value(m[1]) if m else None
        if value is not None and str(value) != answer:
            return "copy"
        if line.startswith("So the answer is") and line != f"So the answer is {answer}.":
            return "answer"
    return "after the first pass"


def strategy(response: str) -> str:
    worked, one_line = product_steps(response)
    return "no product" if not worked + one_line else "mixed" if worked and one_line else \
        "worked" if worked else "one-line"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--stages", default="sft,rl")
    ap.add_argument("--difficulty", type=int, default=3)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--config", default="{}", help="JSON overrides of the preset's PipelineConfig")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = Pipeline(PipelineConfig.preset(args.preset, **json.loads(args.config)), args.run_dir, progress=False)
    problems = [p for p in pipe.held_out if p.difficulty == args.difficulty]
    for stage in args.stages.split(","):
        responses = sample_responses(pipe.load(stage), problems, pipe.codec, 1, pipe.eval_max_new, temperature=0.0)
        texts = [pipe.codec.decode(toks) for (toks,) in responses]
        right = [verify(t, p.answer) for t, p in zip(texts, problems)]
        by_strategy = Counter((strategy(t), ok) for t, ok in zip(texts, right))
        errors = Counter(first_error(t, p.answer) for t, p, ok in zip(texts, problems, right) if not ok)
        print(f"{stage}: d{args.difficulty} greedy {sum(right)}/{len(problems)} right")
        for name in ("no product", "one-line", "worked", "mixed"):
            print(f"  {name:>10}: {by_strategy[name, True]:3d} right, {by_strategy[name, False]:3d} wrong")
        print("  first error:", ", ".join(f"{k} {n}" for k, n in errors.most_common()))


if __name__ == "__main__":
    main()
