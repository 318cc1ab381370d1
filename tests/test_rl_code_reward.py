"""Code rewards on users' task rows: stdin/stdout, function calls and assert statements, judged in this
process on plain data the sandboxed program reported (muonext.rl.judge, code_reward)."""

from __future__ import annotations

import ast
import math
import re

import pytest

from muonext.rl.code_reward import check_code_row, code_reward, extract_code, run_row
from muonext.rl.judge import Evaluator, UnsupportedTestError, from_wire, split_asserts, values_equal, verdict

ADD = "def add(a, b):\n    return a + b\n"


# -- the judge, in this process -------------------------------------------------------------------


def test_split_sends_only_the_program_dependent_parts_to_the_child():
    imports, probes, checks = split_asserts(
        "import math\n"
        "assert add(1, 2) == 3\n"
        "assert abs(area(1.0) - math.pi) < 1e-9, 'area'\n"
        "assert sorted(f([3, 1])) == [1, 3] and g() is None\n"
        "assert not any(x < 0 for x in h())\n"
    )
    assert imports == ["import math"]
    assert probes == ["add(1, 2)", "area(1.0)", "f([3, 1])", "g()", "any((x < 0 for x in h()))"]
    assert [c.probes for c in checks] == [(0,), (1,), (2, 3), (4,)]
    # expected values stay here: no probe holds 3, math.pi, 1e-9, [1, 3] or None
    assert all("3)" not in p or p == "add(1, 2)" for p in probes)
    assert not any("pi" in p or "1e-09" in p for p in probes)


@pytest.mark.parametrize(
    "tests",
    [
        "x = 5\nassert f() == x\n",
        "for i in range(3):\n    assert f(i)\n",
        "def check(c):\n    assert c(1) == 2\n",
    ],
)
def test_statements_that_would_run_beside_the_program_are_refused(tests):
    with pytest.raises(UnsupportedTestError, match="only assert and import statements"):
        split_asserts(tests)


def test_verdict_on_reported_values():
    _, _, checks = split_asserts("assert f() == 3\nassert abs(g() - 0.5) < 1e-9\n")
    assert verdict(checks, [{"value": 3}, {"value": 0.5}]) == "passed"
    assert verdict(checks, [{"value": 3}, {"value": 0.7}]).startswith("test failed: line 2: ")
    assert (
        verdict(checks, [{"error": "line 1: ValueError: no"}, {"value": 0.5}])
        == "test error: line 1: assert f() == 3: line 1: ValueError: no"
    )
    assert verdict(checks, [{"value": 3}]).startswith("sandbox error: malformed results")
    assert verdict(checks, [{"value": 3}, {"weird": 1}]).startswith("sandbox error: malformed results")


def test_wire_decoding_and_equality():
    wire = {"tuple": [1, {"set": [2, 3]}, {"dict": [[{"tuple": [1, 2]}, "x"]]}, {"float": "inf"}]}
    assert from_wire(wire) == (1, {2, 3}, {(1, 2): "x"}, math.inf)
    assert values_equal(0.1 + 0.2, 0.3) and values_equal([1, 2.0], [1, 2])
    assert not values_equal([1, 2], (1, 2)) and not values_equal("1", 1) and not values_equal(0.3, 0.31)
    assert Evaluator([])(ast.parse("2 ** 3 + len([1, 2])", mode="eval").body) == 10
    with pytest.raises(UnsupportedTestError, match="too large"):
        Evaluator([])(ast.parse("2 ** 99999", mode="eval").body)


def test_extract_code_takes_the_last_fenced_block():
    assert extract_code("plan\n```python\nx = 1\n```\nthen\n```py\nx = 2\n```\ndone") == "x = 2\n"
    assert extract_code("```\nprint(1)\n") == "print(1)\n"  # an unclosed fence runs to the end
    assert extract_code("x = 3\n") == "x = 3\n"


# -- rows, end to end through the sandbox ---------------------------------------------------------

ROWS = {
    "stdio": {
        "prompt": "Add two numbers.",
        "tests": [{"input": "2 3\n", "output": "5\n"}, {"input": "-1 1\n", "output": "0"}],
    },
    "call": {
        "prompt": "Write add.",
        "entry_point": "add",
        "tests": [{"args": [1, 2], "expected": 3}, {"args": [[1], [2]], "expected": [1, 2]}],
    },
    "asserts": {"prompt": "Write add.", "tests": "assert add(1, 2) == 3\nassert add('a', 'b') == 'ab'\n"},
}
RIGHT = {"stdio": "a, b = map(int, input().split())\nprint(a + b)\n", "call": ADD, "asserts": ADD}
WRONG = {
    "stdio": "a, b = map(int, input().split())\nprint(a - b)\n",
    "call": "def add(a, b):\n    return a\n",
    "asserts": "def add(a, b):\n    return b\n",
}


@pytest.mark.parametrize("kind", list(ROWS))
def test_rows_reward_right_code_and_only_right_code(kind):
    row = ROWS[kind]
    assert check_code_row(row) == kind
    assert code_reward(f"Here it is:\n```python\n{RIGHT[kind]}```\n", row, timeout_s=10) == 1.0
    result = run_row(WRONG[kind], row, timeout_s=10)
    assert not result.passed and result.reason.startswith("test failed"), result.reason
    assert code_reward(WRONG[kind], row, timeout_s=10) == 0.0


def test_stdio_program_that_crashes_or_exits_nonzero_fails():
    row = ROWS["stdio"]
    r = run_row("import sys\nprint(5)\nsys.exit(3)\n", row, timeout_s=10)
    assert r.reason == "test error: tests[0]: the program exited with status 3", r.reason
    r = run_row("print(1 / 0)\n", row, timeout_s=10)
    assert r.reason.startswith("test error: tests[0]: the program exited with status 1"), r.reason


def test_call_results_must_be_plain_data():
    r = run_row("def add(a, b):\n    return object()\n", ROWS["call"], timeout_s=10)
    assert not r.passed and "not plain data" in r.reason, r.reason


@pytest.mark.parametrize(
    "row,field",
    [
        ({"prompt": "p"}, "'tests'"),
        ({"prompt": "p", "tests": []}, "'tests'"),
        ({"prompt": "p", "tests": [{"input": "1"}]}, "'tests[0]'"),
        (
            {"prompt": "p", "entry_point": "not valid", "tests": [{"args": [], "expected": 1}]},
            "'entry_point'",
        ),
        ({"prompt": "p", "entry_point": "f", "tests": [{"args": 1, "expected": 1}]}, "'tests[0]'"),
        ({"prompt": "p", "tests": "x = 1\nassert f() == x\n"}, "'tests'"),
        ({"prompt": "p", "tests": "assert f(\n"}, "'tests'"),
    ],
)
def test_bad_rows_are_refused_naming_the_field(row, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        check_code_row(row)
