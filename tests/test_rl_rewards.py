"""Length reward (k1.5 Sec. 2.3.3), its warm-up wrapper, and repeat detection."""

import pytest

from muonext.rl.length import LengthPenalty, length_reward
from muonext.rl.repeat import RepeatDetector, Repetition, ends_in_repetition


def lam(n, lo, hi):
    return 0.5 - (n - lo) / (hi - lo)


def test_length_reward_three_cases():
    lengths = [100, 150, 200, 300]
    correct = [True, False, False, True]
    got = length_reward(lengths, correct)
    # correct: λ; wrong and shorter than the middle: min(0, λ) = 0; wrong and longer: λ < 0
    assert got == pytest.approx([lam(100, 100, 300), 0.0, lam(200, 100, 300), lam(300, 100, 300)])
    assert got == pytest.approx([0.5, 0.0, 0.0, -0.5])


def test_length_reward_hand_example():
    # min 10, max 50: λ = 0.5 − (len − 10)/40
    got = length_reward([10, 20, 30, 40, 50], [False, True, True, False, False])
    assert got == pytest.approx([0.0, 0.25, 0.0, -0.25, -0.5])


def test_length_reward_wrong_short_answer_is_not_rewarded():
    assert length_reward([5, 500], [False, True]) == [0.0, -0.5]


def test_length_reward_all_equal_is_zero():
    assert length_reward([7, 7, 7], [True, False, True]) == [0.0, 0.0, 0.0]
    assert length_reward([3], [True]) == [0.0]
    assert length_reward([], []) == []


def test_length_reward_validation():
    with pytest.raises(ValueError, match="same size, got 2 and 3"):
        length_reward([1, 2], [True, False, True])
    with pytest.raises(ValueError, match="negative at"):
        length_reward([1, -2], [True, False])


def test_length_penalty_warmup_and_weight():
    pen = LengthPenalty(weight=0.2, warmup_iters=10)
    lengths, correct = [10, 30], [True, True]
    assert pen(lengths, correct, iteration=9) == [0.0, 0.0]
    assert pen(lengths, correct, iteration=10) == pytest.approx([0.1, -0.1])
    assert not LengthPenalty(weight=0.0).active(100)
    batched = pen.batched([10, 30, 5, 5], [True, True, True, False], group_size=2, iteration=10)
    assert batched == pytest.approx([0.1, -0.1, 0.0, 0.0])
    with pytest.raises(ValueError, match="not a multiple of group_size=3"):
        pen.batched([1, 2, 3, 4], [True] * 4, group_size=3, iteration=10)
    with pytest.raises(ValueError, match="weight must be >= 0"):
        LengthPenalty(weight=-1.0)


# ------------------------------------------------------------------------------------------ repeats
def test_repetition_at_the_end_is_found():
    det = RepeatDetector(min_ngram=1, max_ngram=8, min_repeats=4, min_span=8)
    loop = [7, 8, 9]
    tokens = [1, 2, 3, 4] + loop * 5
    assert det(tokens) == Repetition(ngram=3, repeats=5)
    assert det(tokens + [7]) == Repetition(ngram=3, repeats=5)  # a partial copy continues the loop
    assert det([5] * 20) == Repetition(ngram=1, repeats=20)


def test_no_repetition():
    det = RepeatDetector(min_ngram=1, max_ngram=8, min_repeats=4, min_span=8)
    assert det(list(range(100))) is None
    assert det([1, 2, 3] * 5 + [4]) is None  # the loop was broken: not at the end any more
    assert det([1, 2] * 3) is None  # 3 repeats < 4
    assert det([0, 0, 0, 0]) is None  # span 4 < 8
    assert det([]) is None


def test_repetition_parameters():
    assert ends_in_repetition([1, 2] * 4, min_ngram=2, max_ngram=2, min_repeats=4, min_span=8)
    assert not ends_in_repetition([1, 2] * 4, min_ngram=3, max_ngram=3, min_repeats=2, min_span=0)
    assert ends_in_repetition([1, 2] * 4, min_ngram=3, max_ngram=4, min_repeats=2, min_span=0)  # period 4 too
    assert ends_in_repetition([3] * 40, min_ngram=1, max_ngram=1, min_repeats=40, min_span=0)
    assert not ends_in_repetition([3] * 39, min_ngram=1, max_ngram=1, min_repeats=40, min_span=0)
    with pytest.raises(ValueError, match="min_repeats must be >= 2"):
        RepeatDetector(min_repeats=1)
    with pytest.raises(ValueError, match="min_ngram <= max_ngram"):
        RepeatDetector(min_ngram=5, max_ngram=2)
