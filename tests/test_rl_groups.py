"""Whole groups for the baseline (k1.5's r̄ over all k samples): with partial rollouts a finished
sample waits until its siblings have finished or been dropped from the replay buffer, and drops are
counted in the metrics."""

import pytest
import torch

from muonext.models import MoonlightConfig, MoonlightForCausalLM
from muonext.rl.config import RLConfig
from muonext.rl.groups import GroupTracker
from muonext.rl.rollout import Trajectory
from muonext.rl.task_adapter import MathTask
from muonext.rl.tasks import generate_problems
from muonext.rl.text_codec import CharCodec
from muonext.rl.trainer import RLTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _traj(group: str, n: int) -> Trajectory:
    return Trajectory(0, group, [1], [2] * n, 0, 0, 1, "finished")


def test_a_group_is_released_when_every_sample_finished_or_was_dropped():
    g = GroupTracker()
    g.launch("a", 3)
    g.launch("b", 2)
    g.finish(_traj("a", 4))
    assert g.complete() == [] and g.held() == 1
    g.finish(_traj("b", 5))
    g.finish(_traj("a", 6))
    g.drop("b")
    assert [len(t.tokens) for t in g.complete()] == [5]  # b: one finished, one dropped
    g.finish(_traj("a", 7))
    state = g.state_dict()
    again = GroupTracker()
    again.load_state_dict(state)
    assert [len(t.tokens) for t in again.complete()] == [4, 6, 7] and again.held() == 0


def _trainer(**overrides):
    torch.manual_seed(0)
    model = MoonlightForCausalLM(MoonlightConfig.preset("debug", vocab_size=CharCodec().vocab_size))
    tasks = [MathTask(p) for p in generate_problems(16, seed=0, difficulties=[1, 2])]
    cfg = RLConfig(**{"iterations": 5, "prompts_per_iter": 2, "samples_per_prompt": 3, "max_new_tokens": 30,
                      "segment_tokens": 8, "minibatch": 64, "sampling": "uniform", "grad_steps": 1,
                      "repeat_penalty": 0.0, **overrides})
    return RLTrainer(model, tasks, cfg)


def test_trained_groups_are_whole_under_partial_rollouts():
    trainer = _trainer()
    seen = []
    real = trainer._rewards

    def spy(ready, i):
        seen.append((i, [(t.group, t.meta["finished_iter"]) for t in ready]))
        return real(ready, i)

    trainer._rewards = spy
    records = trainer.train(progress=False)
    assert any(r["waiting"] for r in records), records  # some sample finished before its siblings
    waited = False
    for i, ready in seen:
        groups = {}
        for group, finished in ready:
            groups.setdefault(group, []).append(finished)
            waited |= finished < i
        assert all(len(f) == 3 for f in groups.values()), (i, groups)  # all k samples, none dropped here
    assert waited, seen  # and a sample that finished early was trained with its group, later


def test_dropped_samples_are_counted_and_their_groups_still_trained():
    trainer = _trainer(buffer_capacity=2, max_continued=2)
    records = trainer.train(progress=False)
    assert sum(r["dropped_capacity"] for r in records) > 0, records
    assert sum(r["trained"] for r in records) > 0
    assert trainer.buffer.dropped == sum(r["dropped_capacity"] for r in records)
