"""A user's RL tasks from JSONL files (DESIGN.md §9).

One row per line:

    {"prompt": "...", "answer": "42"}                                        math: the exact verifier
    {"prompt": "...", "tests": [{"input": "...", "output": "..."}]}          code: stdin → stdout
    {"prompt": "...", "entry_point": "f", "tests": [{"args": [...], "expected": ...}]}     code: calls
    {"prompt": "...", "tests": "assert f(1) == 2\\n..."}                      code: assert statements

plus an optional integer "difficulty" (≥ 1) for the curriculum; rows without one are given the
difficulty measured on the model (`measure_difficulty`). `--tasks FILE[:WEIGHT]` may be repeated:
a file's weight is its share of the prompts drawn (spread over its rows). A bad row is refused with
the file, the line and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from muonext.data.sources import CorpusError, read_jsonl_objects

from .code_reward import check_code_row, extract_code, run_row
from .task_adapter import RewardResult
from .verify import math_reward, parse_number

__all__ = ["CodeRowTask", "MathRowTask", "load_tasks", "measure_difficulty", "parse_task_spec"]

LEVEL_BY_PASS_RATE = ((2 / 3, 1), (1 / 3, 2), (0.0, 3))  # pass rate ≥ threshold → level


@dataclass(frozen=True)
class MathRowTask:
    prompt: str
    answer: str
    difficulty: int | None = None
    weight: float = 1.0

    def reward(self, response: str) -> RewardResult:
        r = math_reward(response, self.answer)
        return RewardResult(r, r > 0.5)


@dataclass(frozen=True)
class CodeRowTask:
    prompt: str
    row: dict = field(repr=False)
    difficulty: int | None = None
    weight: float = 1.0
    timeout_s: float = 5.0

    def reward(self, response: str) -> RewardResult:
        try:
            res = run_row(extract_code(response), self.row, timeout_s=self.timeout_s)
        except Exception as e:  # noqa: BLE001 - a broken sandbox must not stop training
            return RewardResult(0.0, False, f"sandbox raised {type(e).__name__}: {e}")
        return RewardResult(1.0, True) if res.passed else RewardResult(0.0, False, res.reason)


def parse_task_spec(spec: str) -> tuple[str, float]:
    """ "FILE" or "FILE:WEIGHT" → (path, weight)."""
    path, _, weight = spec.rpartition(":")
    if path and weight and not Path(spec).exists():
        try:
            value = float(weight)
        except ValueError:
            raise ValueError(f"--tasks {spec!r}: the weight after ':' must be a number") from None
        if not value > 0:
            raise ValueError(f"--tasks {spec!r}: the weight must be > 0")
        return path, value
    return spec, 1.0


def _task(row: dict, where: str, weight: float):
    if not isinstance(row.get("prompt"), str) or not row["prompt"]:
        raise ValueError(f"{where}: field 'prompt' must be a non-empty string")
    difficulty = row.get("difficulty")
    if difficulty is not None and (
        not isinstance(difficulty, int) or isinstance(difficulty, bool) or difficulty < 1
    ):
        raise ValueError(f"{where}: field 'difficulty' must be an integer >= 1, got {difficulty!r}")
    if "answer" in row:
        answer = row["answer"]
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str) or parse_number(answer) is None:
            raise ValueError(
                f"{where}: field 'answer' must be a number (or a string of one), got {row['answer']!r}"
            )
        return MathRowTask(row["prompt"], answer, difficulty, weight)
    if "tests" not in row:
        raise ValueError(f"{where}: a row needs 'answer' (math) or 'tests' (code)")
    try:
        check_code_row(row)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return CodeRowTask(row["prompt"], row, difficulty, weight)


def load_tasks(specs: list[str]) -> list:
    """The tasks of every `FILE[:WEIGHT]`, each row weighted weight / rows-in-its-file."""
    tasks = []
    for spec in specs:
        path, weight = parse_task_spec(spec)
        try:
            rows = list(read_jsonl_objects(path))
        except (CorpusError, OSError) as e:
            raise ValueError(str(e)) from None
        if not rows:
            raise ValueError(f"{path}: no task rows")
        tasks += [_task(row, f"{path}:{lineno}", weight / len(rows)) for lineno, row in rows]
    return tasks


def measure_difficulty(tasks: list, pass_rates: list[float]) -> list:
    """Tasks without a difficulty get one from their measured pass rate (k samples at a high
    temperature, k1.5's model-based difficulty): ≥ 2/3 → 1, ≥ 1/3 → 2, else 3."""
    out = []
    for task, rate in zip(tasks, pass_rates):
        if task.difficulty is None:
            task = replace(
                task, difficulty=next(level for bound, level in LEVEL_BY_PASS_RATE if rate >= bound)
            )
        out.append(task)
    return out
