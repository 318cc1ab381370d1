"""Arithmetic tasks, the answer extractor and the exact-value verifier, JSONL problem sets."""

import json
import random
import re
from fractions import Fraction

import pytest

from muonext.rl import tasks
from muonext.rl.tasks import (
    LEVELS,
    Problem,
    column_work,
    evaluate,
    generate_problem,
    generate_problems,
    load_problems,
    save_problems,
)
from muonext.rl.verify import answers_match, extract_answer, math_reward, parse_number, verify


# ------------------------------------------------------------------------------------------ generator
def test_generator_is_deterministic():
    a = generate_problems(200, range(1, 7), seed=123)
    b = generate_problems(200, range(1, 7), seed=123)
    c = generate_problems(200, range(1, 7), seed=124)
    assert a == b
    assert a != c


@pytest.mark.parametrize("difficulty", sorted(LEVELS))
def test_every_problem_verifies_against_its_own_solutions(difficulty):
    for i, p in enumerate(generate_problems(300, difficulty, seed=difficulty)):
        assert p.difficulty == difficulty
        long_lines, short_lines = p.long_solution.splitlines(), p.short_solution.splitlines()
        assert long_lines[-1] == short_lines[-1] == f"Answer: {p.answer}", f"{i=} {p=}"
        n_steps = len(short_lines) - 1
        # the re-check, when there is one, repeats each step's work and equation without the prose
        if tasks.rechecks(p.prompt):
            check = long_lines[-n_steps - 2 : -2]
            assert long_lines[-n_steps - 3] == tasks.RECHECK_OPEN and long_lines[-2] == tasks.RECHECK_CLOSE
            assert all(c.endswith(f"{eq}.") for c, eq in zip(check, short_lines))
            long_lines = long_lines[: -n_steps - 3] + long_lines[-1:]
        else:
            assert tasks.RECHECK_OPEN not in p.long_solution
        # the short form is the long form's equations without the column work and the prose
        assert len(short_lines) == len(long_lines) - 2 and len(p.short_solution) < len(p.long_solution) / 2
        for eq, line in zip(short_lines[:-1], long_lines[1:-2]):
            assert line.startswith(eq) or f". {eq}" in line, f"{i=} {eq=} {line=}"
        assert verify(p.long_solution, p.answer), f"{i=} {p=}"
        assert verify(p.short_solution, p.answer), f"{i=} {p=}"
        # the answer is the value of the prompt's expression, computed independently by Python
        expr = p.prompt.removeprefix("What is ").removesuffix("?")
        assert eval(expr) == int(p.answer), f"{i=} {expr=} {p.answer=}"
        # the expression is stated first and after every step but the last, always after the same
        # words, and each statement keeps its value
        stated = re.findall(r"(?:^The|, so the) expression is (.*)\.$", p.long_solution, re.MULTILINE)
        assert long_lines[0] == f"The expression is {expr}." and len(stated) == n_steps, f"{i=} {p=}"
        assert all(eval(e) == int(p.answer) for e in stated), f"{i=} {stated=}"


def _column_result(work: str) -> int:
    """The signed value a column work text computes, each column checked on the way."""
    sign = -1 if "= -(" in work else 1
    cols = work.rsplit(": ", 1)[1].split(", ")
    digits, carry_out = [], 0
    for col in cols:
        expr, value = col.removesuffix(" borrow").split("=")
        assert eval(expr) == int(value), col  # each column's own arithmetic
        digits.append(int(value) % 10)
        carry_out = int(value) // 10 if "+" in expr else 0
    digits.append(carry_out)
    return sign * int("".join(map(str, reversed(digits))))


def test_column_work_computes_every_sum_and_difference():
    rng = random.Random(0)
    cases = [("+", 48, 84), ("-", 84, 48), ("-", 15, 75), ("+", -55, 93), ("-", 100, 1), ("-", 3, -60)]
    cases += [(rng.choice("+-"), rng.randint(-999, 999), rng.randint(-999, 999)) for _ in range(2000)]
    for op, a, b in cases:
        work = column_work(op, a, b)
        if max(abs(a), abs(b)) < 10:
            assert work == ""
            continue
        assert _column_result(work) == (a + b if op == "+" else a - b), (op, a, b, work)
    assert column_work("*", 46, 22) == ""
    assert column_work("+", 48, 84) == "48 + 84: 8+4=12, 4+8+1=13"
    assert column_work("-", 15, 75) == "15 - 75 = -(75 - 15); 75 - 15: 5-5=0, 7-1=6"


def test_recheck_and_product_work_shares():
    # level 1 has only 100 prompts, so its shares are those of 100 hashes: levels 2 and 3 have thousands.
    # 3000 draws: 3 standard errors ≈ 0.027; the two hashes are independent
    problems = generate_problems(3000, (2, 3), seed=5)
    rechecked = [tasks.rechecks(p.prompt) for p in problems]
    worked = [tasks.works_products(p.prompt) for p in problems]
    assert abs(sum(rechecked) / 3000 - tasks.RECHECK_PERCENT / 100) < 0.03
    assert abs(sum(worked) / 3000 - tasks.PRODUCT_WORK_PERCENT / 100) < 0.03
    both = sum(r and w for r, w in zip(rechecked, worked)) / 3000
    assert abs(both - tasks.RECHECK_PERCENT * tasks.PRODUCT_WORK_PERCENT / 1e4) < 0.03


def test_recheck_repeats_each_step():
    # the re-check redoes the column work of sums and differences (what long2short should learn to leave
    # out) and states each product again without its long multiplication
    for p in generate_problems(3000, (2, 3), seed=5):
        if not tasks.rechecks(p.prompt):
            continue
        lines = p.long_solution.splitlines()
        equations = p.short_solution.splitlines()[:-1]
        first, check = lines[1 : 1 + len(equations)], lines[-len(equations) - 2 : -2]
        for eq, line, again in zip(equations, first, check):
            if " * " in eq:
                assert again == f"{eq}.", (p.prompt, again)
            else:
                assert line.startswith(again.removesuffix(".")), (p.prompt, line, again)


def test_product_steps_tell_the_two_strategies_apart():
    for p in generate_problems(1000, 3, seed=6):
        products = [eq for eq in p.short_solution.splitlines() if " * " in eq]
        big = sum(max(abs(int(x.strip("()"))) for x in eq.split(" = ")[0].split(" * ")) >= 10 for eq in products)
        expected = (big, 0) if tasks.works_products(p.prompt) else (0, big)
        assert tasks.product_steps(p.long_solution) == expected, p.long_solution
        assert tasks.product_steps(p.short_solution) == (0, big)
    assert tasks.product_steps("(-12) * 34 = -(12 * 34); 12 * 34: 12 * 4: 2*4=8\n3 * 4 = 12") == (1, 0)


def _long_multiplication_result(work: str) -> int:
    """The signed value a long multiplication text computes, every table fact, carry, partial product
    and column sum checked on the way."""
    sign = -1 if "= -(" in work else 1
    for fact in re.findall(r"\d+[*+]\d+(?:\+\d+)?=\d+", work):
        expr, value = fact.split("=")
        assert eval(expr) == int(value), fact
    for x, d, cols, p in re.findall(r"(\d+) \* (\d): ([^;]*?), so (\d+)", work):
        assert int(x) * int(d) == int(p) and len(cols.split("*")) == len(x) + 1, (x, d, p)
    for x, y, p in re.findall(r"(\d+) \* (\d+) = (\d+)", work):
        assert int(x) * int(y) == int(p), (x, y, p)
    last = work.rsplit("; ", 1)[-1]
    if ": " not in last:  # one non-zero digit in the multiplier: its shifted partial product is the result
        return sign * int(last.split(" = ")[1])
    if "*" not in last.split(": ", 1)[1]:  # the partial products' sum
        return sign * _column_result(last)
    # a one-digit multiplier: each column's value is its last fact (after the carry), units first
    x, cols = last.split(": ")
    digits, value = [], 0
    for col in cols.split(", "):
        value = int(col.split("=")[1])
        if "*" in col:
            digits.append(value)
        else:
            digits[-1] = value
    value = sum(v % 10 * 10**i for i, v in enumerate(digits[:-1])) + digits[-1] * 10 ** (len(digits) - 1)
    return sign * value


def test_long_multiplication_computes_every_product():
    rng = random.Random(1)
    cases = [(47, 86), (6, 47), (4042, 23), (47, 30), (-12, 34), (-12, -34), (123, 456), (47, 0), (10, 10)]
    cases += [(rng.randint(-9999, 9999), rng.randint(-999, 999)) for _ in range(2000)]
    for a, b in cases:
        work = column_work("*", a, b, products=True)
        if max(abs(a), abs(b)) < 10:
            assert work == ""
            continue
        assert _long_multiplication_result(work) == a * b, (a, b, work)
    assert column_work("*", 47, 86, products=True) == (
        "47 * 86: 47 * 6: 7*6=42, 4*6=24, 24+4=28, so 282; 47 * 8: 7*8=56, 4*8=32, 32+5=37, so 376; "
        "47 * 80 = 3760; 282 + 3760: 2+0=2, 8+6=14, 2+7+1=10, 0+3+1=4")
    assert column_work("*", -3, 25, products=True) == "(-3) * 25 = -(3 * 25); 25 * 3: 5*3=15, 2*3=6, 6+1=7"


def test_difficulty_controls_size():
    for d, level in LEVELS.items():
        for p in generate_problems(50, d, seed=0):
            expr = p.prompt.removeprefix("What is ").removesuffix("?")
            n_ops = sum(expr.count(f" {op} ") for op in "+-*")
            assert n_ops == level.n_ops, f"{d=} {expr=}"
            numbers = [int(t) for t in expr.replace("(", " ").replace(")", " ").split() if t.isdigit()]
            assert max(len(str(n)) for n in numbers) <= level.digits, f"{d=} {expr=}"
            assert ("(" in expr) <= level.parentheses, f"{d=} {expr=}"
    assert any("(" in p.prompt for p in generate_problems(50, 4, seed=0))


def test_render_and_evaluate_hand_examples():
    # a - (b + c) keeps its parentheses; (a * b) + c loses them
    tree = ("-", 10, ("+", 2, 3))
    assert tasks._render(tree) == "10 - (2 + 3)"
    assert evaluate(tree) == 5
    assert tasks._render(("+", ("*", 2, 3), 4)) == "2 * 3 + 4"
    assert tasks._render(("*", ("+", 2, 3), 4)) == "(2 + 3) * 4"
    long, short, value = tasks._solutions(("*", ("+", 2, 3), 4), recheck=False)
    assert value == 20 and short == "2 + 3 = 5\n5 * 4 = 20\nAnswer: 20"
    assert long.splitlines()[:2] == ["The expression is (2 + 3) * 4.", "2 + 3 = 5, so the expression is 5 * 4."]
    rechecked, _, _ = tasks._solutions(("*", ("+", 12, 3), 4), recheck=True)
    assert rechecked.splitlines()[-5:] == [
        "Let me check each step again.", "12 + 3: 2+3=5, 1+0=1. 12 + 3 = 15.", "15 * 4 = 60.",
        "The steps check out.", "Answer: 60"]


def test_bad_difficulty():
    with pytest.raises(ValueError, match="difficulty must be one of"):
        generate_problem(random.Random(0), 99)


# ------------------------------------------------------------------------------------------ verifier
@pytest.mark.parametrize(
    "text, expected",
    [
        ("Let me think. 3 + 4 = 7. Answer: 7", "7"),
        ("Answer: 5\nwait, no.\nAnswer: 6", "6"),
        ("so the answer is 42.", "42"),
        ("The answer is: -3/4", "-3/4"),
        ("We get \\boxed{1,234} in the end", "1,234"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("Answer: \\boxed{12}", "12"),
        ("numbers 1, 2 and finally 3.5", "3.5"),
        ("ANSWER: +8", "+8"),
        ("Answer: \u22125", "-5"),
        ("Answer: **17**", "17"),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected, f"{text=}"


@pytest.mark.parametrize(
    "written, value",
    [
        ("42", 42),
        (" 42 ", 42),
        ("+42", 42),
        ("42.0", 42),
        ("42.", 42),
        ("1,234", 1234),
        ("1,234,567.50", Fraction(2469135, 2)),
        ("-7", -7),
        ("- 7", -7),
        ("3 / 4", Fraction(3, 4)),
        ("0.5", Fraction(1, 2)),
        ("3/4", Fraction(3, 4)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("-\\frac{1}{2}", Fraction(-1, 2)),
        ("\\dfrac{6}{4}", Fraction(3, 2)),
        ("\\boxed{ 12 }", 12),
        ("$12$", 12),
        (".25", Fraction(1, 4)),
    ],
)
def test_parse_number_tolerates_formatting(written, value):
    assert parse_number(written) == value, f"{written=}"


@pytest.mark.parametrize("written", ["1,23", "12,34,567", "abc", "1/0", "4 2", "", "\\frac{1}{0}", "1.2.3"])
def test_parse_number_rejects_malformed(written):
    assert parse_number(written) is None, f"{written=}"


def test_verifier_is_strict_on_value():
    assert answers_match("0.5", "1/2") and answers_match("\\frac{2}{4}", "0.5")
    assert not answers_match("0.33", "1/3")
    assert not answers_match("0.333333333333", "1/3")
    assert not answers_match("42.5", "42")
    assert not answers_match("42.0000001", "42")
    assert not answers_match("-42", "42")
    assert not answers_match("1,23", "123")
    assert verify("Answer: 1,000", "1000") and verify("so the answer is 1000.0", "1000")
    assert not verify("Answer: 999", "1000")
    assert not verify("I don't know", "1000")
    assert math_reward("Answer: 7", "7") == 1.0 and math_reward("Answer: 8", "7") == 0.0


# ------------------------------------------------------------------------------------------ JSONL
def test_jsonl_round_trip(tmp_path):
    problems = generate_problems(20, [1, 3, 6], seed=5) + [Problem("What is x?", "3", 2)]
    path = tmp_path / "set.jsonl"
    save_problems(path, problems)
    assert load_problems(path) == problems
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert all({"prompt", "answer", "difficulty"} <= set(r) for r in rows)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"prompt": "p", "difficulty": 1}', r"missing field\(s\) \['answer'\]"),
        ('{"prompt": "p", "answer": "1", "difficulty": "hard"}', "field 'difficulty' must be int"),
        ('{"prompt": "p", "answer": "1", "difficulty": 0}', "difficulty must be >= 1"),
        ('{"prompt": 3, "answer": "1", "difficulty": 1}', "field 'prompt' must be str"),
    ],
)
def test_jsonl_bad_rows_name_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    good = '{"prompt": "What is 1 + 1?", "answer": 2, "difficulty": 1}'
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(ValueError, match=rf"bad.jsonl:3: {message}"):
        load_problems(path)


def test_jsonl_numeric_answer_is_accepted(tmp_path):
    path = tmp_path / "num.jsonl"
    path.write_text('{"prompt": "What is 1 + 1?", "answer": 2, "difficulty": 1}\n')
    assert load_problems(path) == [Problem("What is 1 + 1?", "2", 1)]
