"""Which problems to train on: curriculum and prioritized sampling (k1.5 Sec. 2.3.4).

* Curriculum: start with easy problems and let harder ones in as training goes, because a policy that
  solves nothing gets no signal (every reward 0, every advantage 0). `CurriculumSchedule` gives the
  highest difficulty allowed at an iteration, growing linearly or by stages.
* Prioritized: sample problem i with probability ∝ max(floor, 1 − s_i), s_i its tracked success rate,
  so effort goes where the policy fails; the floor keeps solved problems in view (they can be
  forgotten). s_i is an EMA of per-iteration success (or an exact mean of all attempts with
  ``ema=None``). A problem never seen counts as the mean s of the seen problems of its difficulty
  (``unseen="level"``, 0 while none is seen) or as s = 0, top priority (``unseen="zero"``). With a large
  pool most draws are problems never seen, and "zero" would weight them all alike: the level mean is
  what makes prioritized sampling move effort to the levels the policy fails.

They combine: the curriculum restricts the pool, the priorities weight it. All randomness comes from a
seeded `random.Random`, and `state_dict()` is plain JSON data (the RNG state included), so a resumed run
draws exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from muonext.train.checkpoint import py_rng_state, set_py_rng_state

STATE_VERSION = 1
STRATEGIES = ("uniform", "curriculum", "prioritized", "curriculum+prioritized")
UNSEEN = ("level", "zero")


@dataclass(frozen=True)
class CurriculumSchedule:
    """Highest difficulty allowed at an iteration.

    ``stages`` (a list of (iteration, max_difficulty), e.g. [(0, 1), (50, 3), (200, 6)]) when given;
    else linear from `min_difficulty` at `start_iter` to `max_difficulty` at `start_iter + ramp_iters`.
    """

    min_difficulty: int = 1
    max_difficulty: int = 6
    start_iter: int = 0
    ramp_iters: int = 100
    stages: tuple[tuple[int, int], ...] = field(default=())

    def __post_init__(self) -> None:
        if not 1 <= self.min_difficulty <= self.max_difficulty:
            raise ValueError(
                f"CurriculumSchedule needs 1 <= min_difficulty <= max_difficulty, got "
                f"{self.min_difficulty} and {self.max_difficulty}"
            )
        if self.ramp_iters < 0 or self.start_iter < 0:
            raise ValueError(
                f"CurriculumSchedule: start_iter and ramp_iters must be >= 0, got "
                f"{self.start_iter} and {self.ramp_iters}"
            )
        stages = tuple((int(i), int(d)) for i, d in self.stages)
        object.__setattr__(self, "stages", stages)
        if stages and (stages[0][0] != 0 or any(a[0] >= b[0] for a, b in itertools.pairwise(stages))):
            raise ValueError(
                f"CurriculumSchedule.stages must start at iteration 0 with strictly increasing "
                f"iterations, got {list(stages)}"
            )

    def max_allowed(self, iteration: int) -> int:
        if self.stages:
            return [d for i, d in self.stages if i <= iteration][-1]
        if self.ramp_iters == 0:
            return self.max_difficulty if iteration >= self.start_iter else self.min_difficulty
        frac = min(1.0, max(0.0, (iteration - self.start_iter) / self.ramp_iters))
        return self.min_difficulty + int((self.max_difficulty - self.min_difficulty) * frac + 1e-9)


class ProblemSampler:
    """Draws problem indices for an iteration and tracks per-problem success.

    `difficulties[i]` is problem i's level and `mix[i]` its mixing weight (default 1: the share of its
    task file, `user_tasks.load_tasks`). `sample(n, iteration)` returns n indices, distinct when the
    pool allows (weighted sampling without replacement: the first draw has probability ∝ weight, later
    draws renormalise over what is left); ``replacement=True`` makes every draw ∝ weight.
    After scoring, `update(index, successes)` with that problem's sample outcomes.
    """

    def __init__(
        self,
        difficulties: Sequence[int],
        strategy: str = "curriculum+prioritized",
        curriculum: CurriculumSchedule | None = None,
        priority_floor: float = 0.05,
        ema: float | None = 0.3,
        seed: int = 0,
        unseen: str = "level",
        mix: Sequence[float] | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if unseen not in UNSEEN:
            raise ValueError(f"unseen must be one of {UNSEEN}, got {unseen!r}")
        if not difficulties:
            raise ValueError("difficulties is empty: nothing to sample from")
        if not 0.0 <= priority_floor <= 1.0:
            raise ValueError(f"priority_floor must be in [0, 1], got {priority_floor}")
        if ema is not None and not 0.0 < ema <= 1.0:
            raise ValueError(f"ema must be in (0, 1] or None (exact mean), got {ema}")
        self.difficulties = [int(d) for d in difficulties]
        self.mix = [1.0] * len(self.difficulties) if mix is None else [float(m) for m in mix]
        if len(self.mix) != len(self.difficulties) or not all(m > 0 for m in self.mix):
            raise ValueError("mix must hold one positive weight per problem")
        self.strategy = strategy
        self.curriculum = curriculum or CurriculumSchedule(
            min_difficulty=min(self.difficulties), max_difficulty=max(self.difficulties)
        )
        self.priority_floor = priority_floor
        self.ema = ema
        self.unseen = unseen
        self.rng = random.Random(seed)
        self.rate: dict[int, float] = {}  # tracked success rate of seen problems
        self.attempts: dict[int, int] = {}

    # -------------------------------------------------------------------------------------- choice
    def pool(self, iteration: int) -> list[int]:
        if "curriculum" not in self.strategy:
            return list(range(len(self.difficulties)))
        top = self.curriculum.max_allowed(iteration)
        pool = [i for i, d in enumerate(self.difficulties) if d <= top]
        if not pool:
            raise ValueError(
                f"curriculum allows difficulty <= {top} at iteration {iteration}, but the "
                f"easiest problem has difficulty {min(self.difficulties)}"
            )
        return pool

    def level_rates(self) -> dict[int, float]:
        """Mean tracked success rate of the seen problems of each level (recomputed, in insertion order,
        so a resumed sampler gets bit-identical weights)."""
        sums, counts = defaultdict(float), defaultdict(int)
        for i, r in self.rate.items():
            sums[self.difficulties[i]] += r
            counts[self.difficulties[i]] += 1
        return {d: sums[d] / counts[d] for d in sums}

    def success_rate(self, index: int, level_rates: dict[int, float] | None = None) -> float:
        if index in self.rate:
            return self.rate[index]
        if self.unseen == "zero":
            return 0.0
        levels = self.level_rates() if level_rates is None else level_rates
        return levels.get(self.difficulties[index], 0.0)

    def weight(self, index: int, level_rates: dict[int, float] | None = None) -> float:
        """The problem's mixing weight (its task file's share), times its priority when prioritized."""
        if "prioritized" not in self.strategy:
            return self.mix[index]
        return self.mix[index] * max(self.priority_floor, 1.0 - self.success_rate(index, level_rates))

    def sample(self, n: int, iteration: int, replacement: bool = False) -> list[int]:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        pool = self.pool(iteration)
        levels = self.level_rates() if "prioritized" in self.strategy and self.unseen == "level" else {}
        weights = [self.weight(i, levels) for i in pool]
        if sum(weights) <= 0:  # every problem solved with priority_floor=0: fall back to uniform
            weights = [1.0] * len(pool)
        if replacement or n > len(pool):
            return self.rng.choices(pool, weights=weights, k=n)
        out = []
        pool, weights = list(pool), list(weights)
        for _ in range(n):
            if sum(weights) <= 0:
                weights = [1.0] * len(weights)
            j = self.rng.choices(range(len(pool)), weights=weights, k=1)[0]
            out.append(pool.pop(j))
            weights.pop(j)
        return out

    def update(self, index: int, successes: Sequence[bool] | float) -> None:
        """Record one iteration's outcome for a problem: its samples' correctness, or a rate in [0, 1]."""
        if not 0 <= index < len(self.difficulties):
            raise IndexError(f"problem index {index} out of range [0, {len(self.difficulties)})")
        if isinstance(successes, (int, float)):
            rate, count = float(successes), 1
        else:
            if not successes:
                raise ValueError(f"update({index}, ...) got no outcomes")
            rate, count = sum(map(bool, successes)) / len(successes), len(successes)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"success rate must be in [0, 1], got {rate}")
        seen = self.attempts.get(index, 0)
        old = self.rate.get(index)
        if old is None:
            self.rate[index] = rate
        elif self.ema is None:
            self.rate[index] = (old * seen + rate * count) / (seen + count)
        else:
            self.rate[index] = old + self.ema * (rate - old)
        self.attempts[index] = seen + count

    # ---------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "strategy": self.strategy,
            "n_problems": len(self.difficulties),
            "rng": py_rng_state(self.rng),
            "rate": {str(k): v for k, v in self.rate.items()},
            "attempts": {str(k): v for k, v in self.attempts.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"ProblemSampler state version {state.get('version')!r} is not {STATE_VERSION}")
        if state["n_problems"] != len(self.difficulties):
            raise ValueError(
                f"state is for {state['n_problems']} problems, this sampler has {len(self.difficulties)}"
            )
        set_py_rng_state(self.rng, state["rng"])
        self.rate = {int(k): float(v) for k, v in state["rate"].items()}
        self.attempts = {int(k): int(v) for k, v in state["attempts"].items()}
