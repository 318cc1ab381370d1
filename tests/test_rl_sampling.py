"""Curriculum and prioritized sampling: schedule, frequencies, determinism, JSON state round-trip."""

import json

import pytest

from muonext.rl.sampling import CurriculumSchedule, ProblemSampler

# Chi-square critical values at p = 0.001 (independent of our code; from the standard table).
CHI2_999 = {1: 10.828, 4: 18.467, 9: 27.877}


def chi_square(counts, probs, n):
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probs))


def test_curriculum_linear_schedule():
    s = CurriculumSchedule(min_difficulty=1, max_difficulty=6, start_iter=10, ramp_iters=50)
    got = {i: s.max_allowed(i) for i in (0, 10, 19, 20, 35, 59, 60, 1000)}
    assert got == {0: 1, 10: 1, 19: 1, 20: 2, 35: 3, 59: 5, 60: 6, 1000: 6}
    assert [s.max_allowed(i) for i in range(100)] == sorted(s.max_allowed(i) for i in range(100))


def test_curriculum_stages():
    s = CurriculumSchedule(stages=[(0, 1), (5, 3), (20, 6)])
    assert [s.max_allowed(i) for i in (0, 4, 5, 19, 20, 99)] == [1, 1, 3, 3, 6, 6]
    with pytest.raises(ValueError, match="must start at iteration 0"):
        CurriculumSchedule(stages=[(1, 1)])
    with pytest.raises(ValueError, match="strictly increasing"):
        CurriculumSchedule(stages=[(0, 1), (5, 2), (5, 3)])


def test_sampler_respects_the_curriculum():
    difficulties = [d for d in range(1, 7) for _ in range(10)]
    sched = CurriculumSchedule(min_difficulty=1, max_difficulty=6, ramp_iters=50)
    sampler = ProblemSampler(difficulties, strategy="curriculum", curriculum=sched, seed=1)
    seen_max = []
    for it in range(60):
        batch = sampler.sample(8, it)
        assert len(set(batch)) == 8, f"{it=} {batch=}"
        top = max(difficulties[i] for i in batch)
        assert top <= sched.max_allowed(it), f"{it=} {top=}"
        seen_max.append(top)
    assert seen_max[0] == 1 and max(seen_max[50:]) == 6  # the hardest level is reached


def test_prioritized_frequencies_follow_one_minus_success_rate():
    rates = [0.0, 0.2, 0.5, 0.8, 0.9]
    sampler = ProblemSampler([1] * 5, strategy="prioritized", priority_floor=0.05, ema=None, seed=7)
    for i, r in enumerate(rates):
        sampler.update(i, [True] * round(10 * r) + [False] * round(10 * (1 - r)))
        assert sampler.success_rate(i) == pytest.approx(r)
    weights = [1 - r for r in rates]
    probs = [w / sum(weights) for w in weights]
    n = 20000
    for replacement in (True, False):  # without replacement, a batch of 1 is one weighted draw
        counts = [0] * 5
        draws = (
            sampler.sample(n, 0, replacement=True)
            if replacement
            else [sampler.sample(1, 0)[0] for _ in range(n)]
        )
        for i in draws:
            counts[i] += 1
        stat = chi_square(counts, probs, n)
        assert stat < CHI2_999[4], f"{replacement=} {counts=} {probs=} {stat=}"


def test_priority_floor_keeps_solved_problems_in_view():
    sampler = ProblemSampler([1] * 10, strategy="prioritized", priority_floor=0.1, ema=None, seed=3,
                             unseen="zero")
    for i in range(9):
        sampler.update(i, [True, True])  # solved: weight = floor
    assert sampler.weight(0) == pytest.approx(0.1) and sampler.weight(9) == 1.0  # unseen: top priority
    n = 20000
    draws = sampler.sample(n, 0, replacement=True)
    probs = [0.1 / 1.9] * 9 + [1.0 / 1.9]
    counts = [draws.count(i) for i in range(10)]
    assert chi_square(counts, probs, n) < CHI2_999[9], counts


def test_unseen_problems_take_their_levels_mean_success():
    difficulties = [1] * 50 + [2] * 50
    sampler = ProblemSampler(difficulties, strategy="prioritized", priority_floor=0.05, ema=None, seed=5)
    assert sampler.weight(0) == sampler.weight(99) == 1.0  # nothing seen yet: top priority
    for i in range(10):
        sampler.update(i, [True] * 9 + [False])  # level 1 solved 90% of the time
        sampler.update(50 + i, [True] + [False] * 3)  # level 2: 25%
    assert sampler.level_rates() == pytest.approx({1: 0.9, 2: 0.25})
    assert sampler.success_rate(30) == pytest.approx(0.9) and sampler.success_rate(80) == pytest.approx(0.25)
    # so draws go to the levels by 0.1 : 0.75 (each level has the same number of problems)
    n = 20000
    draws = sampler.sample(n, 0, replacement=True)
    hard = sum(difficulties[i] == 2 for i in draws)
    assert chi_square([n - hard, hard], [0.1 / 0.85, 0.75 / 0.85], n) < CHI2_999[1]
    zero = ProblemSampler(difficulties, strategy="prioritized", ema=None, unseen="zero")
    zero.update(0, [True])
    assert zero.success_rate(1) == 0.0 and zero.weight(1) == 1.0
    with pytest.raises(ValueError, match="unseen"):
        ProblemSampler(difficulties, unseen="mean")


def test_ema_success_tracking():
    sampler = ProblemSampler([1, 1], strategy="prioritized", ema=0.5)
    sampler.update(0, [True, False])  # first observation is taken as is
    assert sampler.success_rate(0) == 0.5
    sampler.update(0, [True, True])
    assert sampler.success_rate(0) == pytest.approx(0.75)
    sampler.update(0, 0.0)
    assert sampler.success_rate(0) == pytest.approx(0.375)
    with pytest.raises(IndexError):
        sampler.update(5, [True])


def test_combined_strategy_restricts_then_weights():
    difficulties = [1, 1, 2, 3]
    sched = CurriculumSchedule(stages=[(0, 1), (10, 3)])
    sampler = ProblemSampler(
        difficulties,
        strategy="curriculum+prioritized",
        curriculum=sched,
        priority_floor=0.0,
        ema=None,
        seed=0,
        unseen="zero",
    )
    sampler.update(0, [True])  # solved, weight 0: only problem 1 is left at iteration 0
    assert set(sampler.sample(500, 0, replacement=True)) == {1}
    assert set(sampler.sample(500, 10, replacement=True)) == {1, 2, 3}


def test_state_dict_round_trips_through_json():
    a = ProblemSampler([1, 2, 3, 4, 5, 6] * 5, seed=11)
    for it in range(5):
        for i in a.sample(4, it):
            a.update(i, [it % 2 == 0, True])
    state = json.loads(json.dumps(a.state_dict()))
    b = ProblemSampler([1, 2, 3, 4, 5, 6] * 5, seed=999)
    b.load_state_dict(state)
    assert b.rate == a.rate and b.attempts == a.attempts
    for it in range(5, 30):
        assert a.sample(4, it) == b.sample(4, it), f"{it=}"
    with pytest.raises(ValueError, match="state is for 30 problems"):
        ProblemSampler([1], seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        b.load_state_dict({**state, "version": 0})


def test_sampler_validation():
    with pytest.raises(ValueError, match="strategy must be one of"):
        ProblemSampler([1], strategy="greedy")
    with pytest.raises(ValueError, match="easiest problem has difficulty 3"):
        ProblemSampler([3, 4], strategy="curriculum", curriculum=CurriculumSchedule(1, 6)).sample(1, 0)
