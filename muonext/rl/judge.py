"""The judge of code rewards: what the untrusted program computes, and what only the parent decides.

The program and the code that decides its reward never share an interpreter. A test is split in two:

* **probes** — the parts that need the program: calls of its functions, its variables, anything that
  names something outside the judge's own small vocabulary. They run in the sandboxed child, after the
  program, and come back as plain data (`to_wire` / `from_wire`: None, bool, int, float, str, lists,
  tuples, dicts, sets; nothing else, no subclasses), so no `__eq__` of a model-made object ever runs;
* **the verdict** — the comparison with the expected value, evaluated here in the parent by
  `Evaluator`, over literals, plain data and a few pure functions (abs, len, sorted, math.isclose, …).

The expected values never reach the child: it is sent the program and the probes' source only, so
nothing a program does there (walking frames, patching builtins, tracing, printing a pass marker,
exiting) can learn them or report a pass; the worst it can do is report its own outputs, which is what
is being judged anyway.

Test formats (`split_asserts`): `assert EXPR[, MSG]` statements, and `import` statements that the
probes may need (`import math`); nothing else (an assignment would put an expected value in the child).
Function rows ({"entry_point", "tests": [{"args", "expected"}]}) become probes `f(*args)` compared with
`expected` (`call_checks`); stdin/stdout rows compare the program's output text (`output_matches`).
"""

from __future__ import annotations

import ast
import math
import operator
from dataclasses import dataclass

__all__ = [
    "Check",
    "Evaluator",
    "UnsupportedTestError",
    "call_checks",
    "call_verdict",
    "from_wire",
    "output_matches",
    "split_asserts",
    "stdio_verdict",
    "values_equal",
    "verdict",
]


class UnsupportedTestError(ValueError):
    """A test the judge cannot split into probes and a verdict; the message says which and why."""


# Names the parent evaluates itself: pure functions of plain data, and math's constants and functions.
_FUNCTIONS = {
    "abs": abs,
    "len": len,
    "sorted": sorted,
    "min": min,
    "max": max,
    "sum": sum,
    "round": round,
    "all": all,
    "any": any,
    "set": set,
    "frozenset": frozenset,
    "list": list,
    "tuple": tuple,
    "dict": dict,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "isinstance": isinstance,
    "type": type,
}
_CONSTANTS = {"True": True, "False": False, "None": None, "inf": math.inf, "nan": math.nan}
_MATH = {
    name: getattr(math, name)
    for name in (
        "pi",
        "e",
        "tau",
        "inf",
        "nan",
        "isclose",
        "sqrt",
        "floor",
        "ceil",
        "fabs",
        "log",
        "exp",
        "isnan",
        "isinf",
        "gcd",
        "comb",
        "factorial",
        "fsum",
        "prod",
    )
}
_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: pow,
}
_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}
MAX_POWER = 10_000  # a ** b with |b| above this is refused: the judge must not run for ever


@dataclass(frozen=True)
class Check:
    """One assertion: `expr` with program-dependent subtrees replaced by `Name("__probe_<i>")`."""

    line: int
    source: str
    expr: ast.expr
    message: ast.expr | None
    probes: tuple[int, ...]  # indices into the probe list this check reads


def _judge_name(node: ast.expr) -> bool:
    """A name (or math.<name>) the parent evaluates itself."""
    if isinstance(node, ast.Name):
        return node.id in _FUNCTIONS or node.id in _CONSTANTS
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "math"
        and node.attr in _MATH
    )


def _parent_side(node: ast.expr) -> bool:
    """Whether the parent can evaluate `node` alone: literals and its own names, all the way down."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, (ast.Name, ast.Attribute)):
        return _judge_name(node)
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return all(_parent_side(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(
            k is not None and _parent_side(k) and _parent_side(v) for k, v in zip(node.keys, node.values)
        )
    if isinstance(node, ast.UnaryOp):
        return _parent_side(node.operand)
    if isinstance(node, ast.BinOp):
        return type(node.op) in _BINOPS and _parent_side(node.left) and _parent_side(node.right)
    if isinstance(node, (ast.Compare, ast.BoolOp)):
        children = [node.left, *node.comparators] if isinstance(node, ast.Compare) else node.values
        return all(_parent_side(c) for c in children)
    if isinstance(node, ast.Call):
        return (
            _judge_name(node.func)
            and all(_parent_side(a) for a in node.args)
            and all(k.arg is not None and _parent_side(k.value) for k in node.keywords)
        )
    if isinstance(node, ast.Subscript):
        return _parent_side(node.value) and _parent_side(node.slice)
    if isinstance(node, ast.Slice):
        return all(part is None or _parent_side(part) for part in (node.lower, node.upper, node.step))
    return False


_DATA_ARGS = (ast.GeneratorExp, ast.ListComp, ast.SetComp, ast.DictComp, ast.Lambda, ast.Starred)


class _Splitter(ast.NodeTransformer):
    """Replaces each maximal program-dependent subtree by a probe placeholder; collects the probes."""

    def __init__(self, probes: list[str]):
        self.probes = probes
        self.used: list[int] = []

    def probe(self, node: ast.expr) -> ast.expr:
        self.probes.append(ast.unparse(node))
        self.used.append(len(self.probes) - 1)
        return ast.copy_location(ast.Name(id=f"__probe_{len(self.probes) - 1}", ctx=ast.Load()), node)

    def split(self, node: ast.expr) -> ast.expr:
        if _parent_side(node):
            return node
        splittable = isinstance(
            node, (ast.Compare, ast.BoolOp, ast.UnaryOp, ast.BinOp, ast.List, ast.Tuple, ast.Set, ast.Dict)
        )
        if isinstance(node, ast.Call):  # a judge function of data arguments: split the arguments
            splittable = _judge_name(node.func) and not any(isinstance(a, _DATA_ARGS) for a in node.args)
        if isinstance(node, ast.Dict):
            splittable = all(k is not None for k in node.keys)
        if not splittable:
            return self.probe(node)
        for field, value in ast.iter_fields(node):
            if field == "func":
                continue
            if isinstance(value, ast.expr):
                setattr(node, field, self.split(value))
            elif isinstance(value, list):
                setattr(node, field, [self.split(v) if isinstance(v, ast.expr) else v for v in value])
        for keyword in getattr(node, "keywords", []):
            keyword.value = self.split(keyword.value)
        return node


def split_asserts(tests: str) -> tuple[list[str], list[str], list[Check]]:
    """(imports, probes, checks) of assert-style tests; raises SyntaxError or UnsupportedTestError."""
    tree = ast.parse(tests, "tests.py")
    imports, probes, checks = [], [], []
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            imports.append(ast.unparse(stmt))
            continue
        if not isinstance(stmt, ast.Assert):
            raise UnsupportedTestError(
                f"tests.py line {stmt.lineno}: only assert and import statements are judged "
                f"(an expected value computed by other code would run beside the program), "
                f"got {type(stmt).__name__}"
            )
        source = ast.unparse(stmt)  # before the splitter replaces parts of it
        splitter = _Splitter(probes)
        expr = splitter.split(stmt.test)
        message = splitter.split(stmt.msg) if stmt.msg is not None else None
        checks.append(Check(stmt.lineno, source, expr, message, tuple(splitter.used)))
    return imports, probes, checks


def call_checks(entry_point: str, cases: list[dict]) -> tuple[list[str], list]:
    """Probes `entry_point(*args)` and the expected values of function-call test rows."""
    if not entry_point.isidentifier():
        raise UnsupportedTestError(f"entry_point must be a Python identifier, got {entry_point!r}")
    probes, expected = [], []
    for i, case in enumerate(cases):
        if not isinstance(case.get("args"), list) or "expected" not in case:
            raise UnsupportedTestError(f"tests[{i}] must have 'args' (a list) and 'expected'")
        probes.append(f"{entry_point}(*{case['args']!r})")
        expected.append(case["expected"])
    return probes, expected


# -- plain data on the wire ------------------------------------------------------------------------


def from_wire(value):
    """Decodes the child's JSON: lists stay lists; {"tuple"|"set"|"frozenset"|"dict"|"float": …} tags."""
    if isinstance(value, list):
        return [from_wire(v) for v in value]
    if isinstance(value, dict):
        ((tag, payload),) = value.items()
        if tag == "tuple":
            return tuple(from_wire(v) for v in payload)
        if tag in ("set", "frozenset"):
            items = [from_wire(v) for v in payload]
            return set(items) if tag == "set" else frozenset(items)
        if tag == "dict":
            return {from_wire(k): from_wire(v) for k, v in payload}
        if tag == "float":
            return float(payload)  # "inf", "-inf", "nan"
        raise ValueError(f"unknown wire tag {tag!r}")
    return value


def values_equal(a, b, rel_tol: float = 1e-9, abs_tol: float = 1e-12) -> bool:
    """Equality of plain data where floats (and ints against floats) may differ by rounding."""
    if isinstance(a, float) or isinstance(b, float):
        if (
            isinstance(a, (int, float))
            and isinstance(b, (int, float))
            and not isinstance(a, bool)
            and not isinstance(b, bool)
        ):
            return a == b or math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)
        return False
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def output_matches(got: str, want: str) -> bool:
    """stdout against the expected output, ignoring trailing spaces on lines and trailing blank lines."""

    def lines(text: str) -> list[str]:
        out = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
        while out and not out[-1]:
            out.pop()
        return out

    return lines(got) == lines(want)


# -- the verdict ---------------------------------------------------------------------------------


class ProbeError(Exception):
    """A probe the verdict needs raised in the child; carries the child's description."""


class Evaluator:
    """Evaluates a split assertion over probe values: literals, plain data and the judge's functions."""

    def __init__(self, values: list):
        self.values = values  # decoded probe results, or ProbeError for probes that raised

    def __call__(self, node: ast.expr):
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise UnsupportedTestError(f"the judge does not evaluate {type(node).__name__} expressions")
        return method(node)

    def _Constant(self, node):
        return node.value

    def _Name(self, node):
        if node.id.startswith("__probe_"):
            value = self.values[int(node.id[len("__probe_") :])]
            if isinstance(value, ProbeError):
                raise value
            return value
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        return _FUNCTIONS[node.id]

    def _Attribute(self, node):
        return _MATH[node.attr]

    def _List(self, node):
        return [self(e) for e in node.elts]

    def _Tuple(self, node):
        return tuple(self(e) for e in node.elts)

    def _Set(self, node):
        return {self(e) for e in node.elts}

    def _Dict(self, node):
        return {self(k): self(v) for k, v in zip(node.keys, node.values)}

    def _UnaryOp(self, node):
        value = self(node.operand)
        ops = {
            ast.Not: operator.not_,
            ast.USub: operator.neg,
            ast.UAdd: operator.pos,
            ast.Invert: operator.invert,
        }
        return ops[type(node.op)](value)

    def _BinOp(self, node):
        left, right = self(node.left), self(node.right)
        if isinstance(node.op, ast.Pow) and isinstance(right, (int, float)) and abs(right) > MAX_POWER:
            raise UnsupportedTestError(f"exponent {right} is too large for the judge")
        return _BINOPS[type(node.op)](left, right)

    def _BoolOp(self, node):
        value = None
        for child in node.values:
            value = self(child)
            if isinstance(node.op, ast.And) and not value:
                return value
            if isinstance(node.op, ast.Or) and value:
                return value
        return value

    def _Compare(self, node):
        left = self(node.left)
        for op, comparator in zip(node.ops, node.comparators):
            right = self(comparator)
            ok = (
                values_equal(left, right)
                if isinstance(op, ast.Eq)
                else (
                    not values_equal(left, right)
                    if isinstance(op, ast.NotEq)
                    else _COMPARE[type(op)](left, right)
                )
            )
            if not ok:
                return False
            left = right
        return True

    def _Call(self, node):
        func = self(node.func)
        return func(*[self(a) for a in node.args], **{k.arg: self(k.value) for k in node.keywords})

    def _Subscript(self, node):
        return self(node.value)[self(node.slice)]

    def _Slice(self, node):
        return slice(*(None if part is None else self(part) for part in (node.lower, node.upper, node.step)))


# -- verdicts over what the child reported -------------------------------------------------------


def _values(results: list, count: int) -> list:
    """Decoded probe values (ProbeError for probes that raised); ValueError when malformed."""
    if len(results) != count:
        raise ValueError(f"{len(results)} results for {count} probes")
    values = []
    for r in results:
        if isinstance(r, dict) and "value" in r:
            values.append(from_wire(r["value"]))
        elif isinstance(r, dict) and isinstance(r.get("error"), str):
            values.append(ProbeError(r["error"]))
        else:
            raise ValueError("a result is neither a value nor an error")
    return values


def verdict(checks: list[Check], results: list) -> str:
    """ "passed", or the first assertion that fails or errs, in the test file's words."""
    try:
        values = _values(results, sum(len(c.probes) for c in checks))
    except (ValueError, TypeError) as e:
        return f"sandbox error: malformed results ({e})"
    evaluate = Evaluator(values)
    for check in checks:
        where = f"line {check.line}: {check.source}"
        try:
            ok = evaluate(check.expr)
        except ProbeError as e:
            return f"test error: {where}: {e}"
        except Exception as e:  # noqa: BLE001 - comparing plain data can raise (e.g. 1 < "a")
            return f"test error: {where}: {type(e).__name__}: {e}"
        if not ok:
            message = ""
            if check.message is not None:
                try:
                    message = f": {evaluate(check.message)}"
                except Exception:  # noqa: BLE001 - an unreadable message does not change the verdict
                    message = ""
            return f"test failed: {where}: AssertionError{message}"
    return "passed"


def call_verdict(probes: list[str], expected: list, results: list) -> str:
    try:
        values = _values(results, len(probes))
    except (ValueError, TypeError) as e:
        return f"sandbox error: malformed results ({e})"
    for i, (probe, value, want) in enumerate(zip(probes, values, expected)):
        if isinstance(value, ProbeError):
            return f"test error: tests[{i}]: {probe}: {value}"
        if not values_equal(value, want):
            return f"test failed: tests[{i}]: {probe} returned {value!r:.200}, expected {want!r:.200}"
    return "passed"


def stdio_verdict(outputs: list[str], results: list) -> str:
    if len(results) != len(outputs):
        return f"sandbox error: malformed results ({len(results)} runs for {len(outputs)} inputs)"
    for i, (want, r) in enumerate(zip(outputs, results)):
        if not (isinstance(r, dict) and isinstance(r.get("stdout"), str) and isinstance(r.get("exit"), int)):
            return "sandbox error: malformed results"
        if r["exit"] != 0:
            return f"test error: tests[{i}]: the program exited with status {r['exit']}"
        if not output_matches(r["stdout"], want):
            return f"test failed: tests[{i}]: output {r['stdout'][:200]!r}, expected {want[:200]!r}"
    return "passed"
