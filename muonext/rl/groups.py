"""Whole groups for the baseline: a finished sample waits until all k samples of its prompt are in.

k1.5's baseline r̄ is the mean reward of the k samples drawn for a prompt. With partial rollouts the
samples of one group finish in different iterations; training each iteration on whatever finished
would give a sample that finishes alone r − r̄ = 0 (no signal) and split the others' baselines. So a
finished trajectory waits here (scored, its reward kept in `meta`) until every sample of its group has
finished or been dropped from the replay buffer (age or capacity); the group is then trained as one,
with the baseline and the length reward over all its finished samples. A waiting trajectory's
log π_i is recomputed by a forward pass when it is trained: the policy moved since it finished.

Without partial rollouts every sample finishes in the iteration it starts, and nothing waits.
State is plain JSON (the trajectories' tokens, rewards and bookkeeping), saved with the trainer.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .rollout import Trajectory

STATE_VERSION = 1


class GroupTracker:
    def __init__(self) -> None:
        self.open: dict[str, int] = {}  # group -> samples neither finished nor dropped yet
        self.waiting: dict[str, list[Trajectory]] = {}  # group -> its finished samples, in finishing order

    def launch(self, group: str, samples: int) -> None:
        self.open[group] = self.open.get(group, 0) + samples

    def _settle(self, group: str) -> None:
        if group not in self.open:  # a trajectory of a run resumed from a state without groups
            self.open[group] = 1
        self.open[group] -= 1

    def finish(self, trajectory: Trajectory) -> None:
        self._settle(trajectory.group)
        self.waiting.setdefault(trajectory.group, []).append(trajectory)

    def drop(self, group: str) -> None:
        """A sample of `group` left the replay buffer unfinished: the group will be trained without it."""
        self._settle(group)

    def complete(self) -> list[Trajectory]:
        """The finished samples of every group now complete (oldest group first), removed from here."""
        done = [g for g, n in self.open.items() if n <= 0]
        out = []
        for g in done:
            del self.open[g]
            out += self.waiting.pop(g, [])
        return out

    def held(self) -> int:
        """Finished trajectories waiting for the rest of their group."""
        return sum(len(v) for v in self.waiting.values())

    def state_dict(self) -> dict[str, Any]:
        # lists of pairs, not objects: the order is launch order (what `complete` returns in), and
        # checkpoints write JSON with sorted keys
        return {"version": STATE_VERSION, "open": [[g, n] for g, n in self.open.items()],
                "waiting": [[g, [asdict(t) for t in ts]] for g, ts in self.waiting.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"GroupTracker state version {state.get('version')!r} is not {STATE_VERSION}")
        self.open = {g: int(n) for g, n in state["open"]}
        self.waiting = {g: [Trajectory(**t) for t in ts] for g, ts in state["waiting"]}
