"""What the RL trainer needs of a task: a prompt, a difficulty and a reward of a response text.

`MathTask` wraps an arithmetic `Problem` (exact verifier). `CodeTask` runs the response as a program
against assert-tests in the sandbox (`run_code_tests`); `prefix` is code placed before the response
(a given function header, or, in tests, a program that never ends). A reward never raises: a sandbox
that fails for any reason gives 0 and says so in `RewardResult.error`, and training goes on.
"""

from __future__ import annotations

from dataclasses import dataclass

from .sandbox import SandboxLimits, run_code_tests
from .tasks import Problem
from .verify import math_reward


@dataclass(frozen=True)
class RewardResult:
    reward: float
    correct: bool
    error: str | None = None


@dataclass(frozen=True)
class MathTask:
    problem: Problem

    @property
    def prompt(self) -> str:
        return self.problem.prompt

    @property
    def difficulty(self) -> int:
        return self.problem.difficulty

    def reward(self, response: str) -> RewardResult:
        r = math_reward(response, self.problem.answer)
        return RewardResult(r, r > 0.5)


@dataclass(frozen=True)
class CodeTask:
    prompt: str
    tests: str
    difficulty: int = 1
    prefix: str = ""
    timeout_s: float = 2.0
    limits: SandboxLimits | None = None

    def reward(self, response: str) -> RewardResult:
        try:
            res = run_code_tests(self.prefix + response, self.tests, timeout_s=self.timeout_s, limits=self.limits)
        except Exception as e:  # noqa: BLE001 — a broken sandbox must not stop training
            return RewardResult(0.0, False, f"sandbox raised {type(e).__name__}: {e}")
        if res.passed:
            return RewardResult(1.0, True)
        return RewardResult(0.0, False, getattr(res, "reason", None) or "failed")
