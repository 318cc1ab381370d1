"""DPO loss and pairs, shortest rejection sampling, weight merging (k1.5 long2short)."""

import math

import pytest
import torch

from muonext.rl.dpo import build_dpo_pairs, dpo_loss
from muonext.rl.long2short import merge_state_dicts, shortest_correct_index, shortest_rejection_sampling


def test_dpo_loss_closed_form_and_gradient():
    pc = torch.tensor([-10.0, -5.0], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([-12.0, -4.0], dtype=torch.float64, requires_grad=True)
    rc = torch.tensor([-11.0, -5.0], dtype=torch.float64)
    rr = torch.tensor([-11.0, -6.0], dtype=torch.float64)
    beta = 0.5
    margins = [beta * ((-10 + 11) - (-12 + 11)), beta * ((-5 + 5) - (-4 + 6))]  # [1.0, -1.0]
    expected = sum(-math.log(1 / (1 + math.exp(-m))) for m in margins) / 2
    loss, stats = dpo_loss(pc, pr, rc, rr, beta)
    assert loss.item() == pytest.approx(expected)
    assert stats["accuracy"] == 0.5 and stats["margin"] == pytest.approx(0.0)
    loss.backward()
    # ∂/∂π_c = −β·σ(−m)/P, ∂/∂π_r = +β·σ(−m)/P
    sig = [1 / (1 + math.exp(m)) for m in margins]
    assert pc.grad.tolist() == pytest.approx([-beta * s / 2 for s in sig])
    assert pr.grad.tolist() == pytest.approx([beta * s / 2 for s in sig])
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(pc, pr, rc, rr, 0.0)
    with pytest.raises(ValueError, match="same 1-D shape"):
        dpo_loss(pc, pr[:1], rc, rr, 0.1)


def test_dpo_pairs_hand_example():
    lengths = [300, 100, 120, 150, 90, 400]
    correct = [True, True, True, True, False, False]
    # chosen: index 1 (shortest correct, 100). Rejected: wrong ones (4, 5, even the short 4) and
    # correct ones ≥ 1.5 × 100 = 150 (0 and 3). Index 2 (120) is correct and not long enough: left out.
    assert build_dpo_pairs(lengths, correct) == [(1, 0), (1, 3), (1, 4), (1, 5)]
    assert build_dpo_pairs(lengths, correct, ratio=3.0) == [(1, 0), (1, 4), (1, 5)]
    assert build_dpo_pairs([10, 20], [False, False]) == []
    assert build_dpo_pairs([10, 12], [True, True]) == []
    assert build_dpo_pairs([10, 10, 40], [True, True, True]) == [(0, 2)]  # ties: the first is chosen


def test_shortest_rejection_sampling():
    prompts = ["p0", "p1", "p2"]
    responses = [["long", "short", "wrong"], ["x", "y"], ["a"]]
    lengths = [[40, 10, 5], [3, 4], [1]]
    correct = [[True, True, False], [False, False], [True]]
    assert shortest_rejection_sampling(prompts, responses, lengths, correct) == [("p0", "short"), ("p2", "a")]
    assert shortest_correct_index([5, 3, 3], [True, True, True]) == 1
    assert shortest_correct_index([], []) is None
    with pytest.raises(ValueError, match="one entry per prompt"):
        shortest_rejection_sampling(prompts, responses[:2], lengths, correct)


def test_merge_state_dicts_closed_form():
    a = {
        "w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
        "b": torch.tensor([1.0], dtype=torch.bfloat16),
        "steps": torch.tensor(7),
        "d": torch.tensor([0.1], dtype=torch.float64),
    }
    b = {
        "w": torch.tensor([[3.0, 2.0], [1.0, 0.0]]),
        "b": torch.tensor([3.0], dtype=torch.bfloat16),
        "steps": torch.tensor(7),
        "d": torch.tensor([0.7], dtype=torch.float64),
    }
    m = merge_state_dicts(a, b, 0.25)
    assert torch.equal(m["w"], torch.tensor([[2.5, 2.0], [1.5, 1.0]]))
    assert m["b"].dtype == torch.bfloat16 and m["b"].item() == 2.5
    assert m["d"].dtype == torch.float64 and m["d"].item() == pytest.approx(
        0.25 * 0.1 + 0.75 * 0.7, abs=1e-15
    )
    assert m["steps"].item() == 7
    assert torch.equal(merge_state_dicts(a, b, 1.0)["w"], a["w"])
    assert torch.equal(merge_state_dicts(a, b, 0.0)["w"], b["w"])
    m["w"][0, 0] = 100.0
    assert a["w"][0, 0] == 1.0  # the inputs are not aliased


def test_merge_state_dicts_lists_every_mismatch():
    a = {
        "x": torch.zeros(2),
        "y": torch.zeros(2, 3),
        "z": torch.zeros(1),
        "i": torch.tensor(1),
        "only_a": torch.zeros(1),
    }
    b = {
        "x": torch.zeros(2),
        "y": torch.zeros(3, 2),
        "z": torch.zeros(1, dtype=torch.float64),
        "i": torch.tensor(2),
        "only_b": torch.zeros(1),
    }
    with pytest.raises(ValueError) as info:
        merge_state_dicts(a, b, 0.5)
    msg = str(info.value)
    assert "5 problem(s)" in msg
    for part in (
        "'only_a' only in a",
        "'only_b' only in b",
        "'y': shape [2, 3] vs [3, 2]",
        "'z': dtype torch.float32 vs torch.float64",
        "'i': non-floating tensors",
    ):
        assert part in msg, msg
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\]"):
        merge_state_dicts(a, a, 1.5)
