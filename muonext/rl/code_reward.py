"""The reward of a code response against one task row (DESIGN.md §9).

Row formats (a task file is JSONL, one row per line):

    {"prompt": ..., "tests": [{"input": "...", "output": "..."}, ...]}                 stdin → stdout
    {"prompt": ..., "entry_point": "f", "tests": [{"args": [...], "expected": ...}]}   function calls
    {"prompt": ..., "tests": "assert f(1) == 2\\n..."}                                  assert statements

The response is the model's text: its last fenced code block (```python … ``` or ``` … ```), or the
whole text when it has none. The program runs in the sandbox and is judged in this process
(`sandbox.py`, `judge.py`); the reward is 1.0 when every test passes, else 0.0.
"""

from __future__ import annotations

import re

from .judge import UnsupportedTestError, split_asserts
from .sandbox import CodeResult, SandboxLimits, run_call_tests, run_code_tests, run_stdio_tests

__all__ = ["check_code_row", "code_reward", "extract_code", "run_row"]

_FENCE = re.compile(r"```[ \t]*[\w+-]*[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(response: str) -> str:
    """The last fenced code block of `response` (an unclosed last fence runs to the end), else all of it."""
    blocks = _FENCE.findall(response)
    return blocks[-1] if blocks else response


def check_code_row(row: dict) -> str:
    """The row's kind ("stdio", "call" or "asserts"); raises ValueError naming the field that is wrong."""
    tests = row.get("tests")
    if isinstance(tests, str):
        try:
            split_asserts(tests)
        except SyntaxError as e:
            raise ValueError(f"field 'tests': line {e.lineno}: {e.msg}") from None
        except UnsupportedTestError as e:
            raise ValueError(f"field 'tests': {e}") from None
        return "asserts"
    if not isinstance(tests, list) or not tests:
        raise ValueError(
            "field 'tests' must be a non-empty list of test cases or a string of assert statements"
        )
    if "entry_point" in row:
        if not isinstance(row["entry_point"], str) or not row["entry_point"].isidentifier():
            raise ValueError(f"field 'entry_point' must be a Python identifier, got {row['entry_point']!r}")
        for i, case in enumerate(tests):
            if not isinstance(case, dict) or not isinstance(case.get("args"), list) or "expected" not in case:
                raise ValueError(f'field \'tests[{i}]\' must be {{"args": [...], "expected": ...}}')
        return "call"
    for i, case in enumerate(tests):
        if (
            not isinstance(case, dict)
            or not isinstance(case.get("input"), str)
            or not isinstance(case.get("output"), str)
        ):
            raise ValueError(f'field \'tests[{i}]\' must be {{"input": "...", "output": "..."}} (strings)')
    return "stdio"


def run_row(code: str, row: dict, timeout_s: float = 5.0, limits: SandboxLimits | None = None) -> CodeResult:
    """Runs `code` against the row's tests; the CodeResult says why it failed."""
    kind = check_code_row(row)
    if kind == "asserts":
        return run_code_tests(code, row["tests"], timeout_s, limits)
    if kind == "call":
        return run_call_tests(code, row["entry_point"], row["tests"], timeout_s, limits)
    return run_stdio_tests(code, row["tests"], timeout_s, limits)


def code_reward(
    response: str, row: dict, timeout_s: float = 5.0, limits: SandboxLimits | None = None
) -> float:
    """1.0 when the response's code passes every test of `row`, else 0.0."""
    return 1.0 if run_row(extract_code(response), row, timeout_s, limits).passed else 0.0
