"""Partial-rollout replay buffer: FIFO, capacity, age limit, JSON checkpoint round-trip."""

import json

import pytest

from muonext.rl.replay import PartialRollout, ReplayBuffer


def rollout(pid, start, n=3, logprobs=True):
    gen = list(range(n))
    return PartialRollout(
        prompt_id=pid,
        prompt_tokens=[1, 2, 3],
        generated=gen,
        start_iter=start,
        logprobs=[-0.5] * n if logprobs else None,
    )


def test_fifo_take_and_capacity():
    buf = ReplayBuffer(capacity=3)
    for i in range(5):
        buf.add(rollout(i, start=0))
    assert len(buf) == 3 and buf.dropped == 2
    batch, expired = buf.take(2, iteration=1)
    assert [r.prompt_id for r in batch] == [2, 3] and expired == []
    assert [r.prompt_id for r in buf] == [4]


def test_age_limit():
    buf = ReplayBuffer(capacity=10, max_age=2)
    buf.add(rollout("old", start=0))
    buf.add(rollout("new", start=2))
    batch, expired = buf.take(5, iteration=3)  # age 3 > 2: expired; age 1: continued
    assert [r.prompt_id for r in expired] == ["old"]
    assert [r.prompt_id for r in batch] == ["new"]


def test_extended():
    r = rollout(0, start=4)
    r2 = r.extended([7, 8], [-1.0, -2.0])
    assert r2.generated == [0, 1, 2, 7, 8] and r2.logprobs == [-0.5] * 3 + [-1.0, -2.0] and r2.segments == 2
    assert r.generated == [0, 1, 2]  # the original is not changed
    with pytest.raises(ValueError, match="exactly when"):
        r.extended([7])
    with pytest.raises(ValueError, match="2 logprobs for 3 generated"):
        PartialRollout(0, [1], [1, 2, 3], 0, logprobs=[0.0, 0.0])


def test_state_round_trips_through_json():
    buf = ReplayBuffer(capacity=4, max_age=5)
    buf.add(rollout(0, start=1))
    buf.add(rollout("p-1", start=2, logprobs=False).extended([9]))
    buf.add(PartialRollout(3, [5], [6], 3, meta={"sample": 2}))
    for _ in range(3):
        buf.add(rollout(9, start=3))  # drops two
    state = json.loads(json.dumps(buf.state_dict()))
    other = ReplayBuffer(capacity=1)
    other.load_state_dict(state)
    assert list(other) == list(buf)
    assert (other.capacity, other.max_age, other.dropped) == (4, 5, 2)
    with pytest.raises(ValueError, match="version"):
        other.load_state_dict({**state, "version": 99})
