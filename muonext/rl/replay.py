"""Partial rollouts (k1.5 Sec. 2.6.1): unfinished trajectories wait in a buffer for the next iteration.

Long chains of thought make rollout time heavy-tailed: one very long answer holds up a whole batch.
k1.5 gives each iteration a token budget; a trajectory that has not finished when the budget runs out
is saved (prompt and the tokens generated so far) and continued in a later iteration, segment by
segment. The buffer is first-in first-out (the oldest trajectories are continued first, so none
starves), bounded in size (`capacity`: adding past it drops the oldest) and in age (`max_age`:
trajectories started more than that many iterations ago are expired; the trainer decides whether they
get a penalty or are simply dropped).

Its state is plain JSON (lists of ints and floats), so checkpoints need no pickle.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

STATE_VERSION = 1


@dataclass(frozen=True)
class PartialRollout:
    """An unfinished response: what to feed the model to continue it, and its bookkeeping.

    `logprobs` are the sampling policy's log-probs of `generated` (one per token), or None when the
    trainer recomputes them; `segments` counts the iterations that have generated a part of it.
    """

    prompt_id: int | str
    prompt_tokens: list[int]
    generated: list[int]
    start_iter: int
    logprobs: list[float] | None = None
    segments: int = 1
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-able extras (e.g. the sample index)

    def __post_init__(self) -> None:
        if self.logprobs is not None and len(self.logprobs) != len(self.generated):
            raise ValueError(
                f"PartialRollout {self.prompt_id!r}: {len(self.logprobs)} logprobs for "
                f"{len(self.generated)} generated tokens"
            )

    def extended(self, tokens: Sequence[int], logprobs: Sequence[float] | None = None) -> PartialRollout:
        """This trajectory continued by one more segment."""
        if (self.logprobs is None) != (logprobs is None):
            raise ValueError("give logprobs for the new tokens exactly when the trajectory keeps them")
        return replace(
            self,
            generated=self.generated + list(tokens),
            segments=self.segments + 1,
            logprobs=None if logprobs is None else self.logprobs + list(logprobs),
        )

    def age(self, iteration: int) -> int:
        return iteration - self.start_iter


class ReplayBuffer:
    """FIFO of `PartialRollout`s with a capacity and an age limit (`max_age=None`: no limit)."""

    def __init__(self, capacity: int, max_age: int | None = None) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        if max_age is not None and max_age < 0:
            raise ValueError(f"max_age must be >= 0 or None, got {max_age}")
        self.capacity = capacity
        self.max_age = max_age
        self._items: deque[PartialRollout] = deque()
        self.dropped = 0  # pushed out by the capacity, over the buffer's life

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(list(self._items))

    def add(self, rollout: PartialRollout) -> list[PartialRollout]:
        """Appends `rollout`; returns the oldest ones pushed out by the capacity (counted in `dropped`)."""
        self._items.append(rollout)
        lost = []
        while len(self._items) > self.capacity:
            lost.append(self._items.popleft())
            self.dropped += 1
        return lost

    def expire(self, iteration: int) -> list[PartialRollout]:
        """Remove and return the trajectories older than `max_age` at `iteration`."""
        if self.max_age is None:
            return []
        old = [r for r in self._items if r.age(iteration) > self.max_age]
        if old:
            self._items = deque(r for r in self._items if r.age(iteration) <= self.max_age)
        return old

    def take(self, n: int, iteration: int) -> tuple[list[PartialRollout], list[PartialRollout]]:
        """Up to `n` oldest trajectories to continue at `iteration`, and the ones that expired."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        expired = self.expire(iteration)
        batch = [self._items.popleft() for _ in range(min(n, len(self._items)))]
        return batch, expired

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "capacity": self.capacity,
            "max_age": self.max_age,
            "dropped": self.dropped,
            "items": [asdict(r) for r in self._items],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"ReplayBuffer state version {state.get('version')!r} is not {STATE_VERSION}")
        self.capacity, self.max_age, self.dropped = state["capacity"], state["max_age"], state["dropped"]
        self._items = deque(PartialRollout(**item) for item in state["items"])
