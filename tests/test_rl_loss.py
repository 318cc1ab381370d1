"""PMD loss against the paper's gradient (closed form, float64), sequence log-probs and entropy."""

import math

import pytest
import torch

from muonext.rl.loss import group_mean, pmd_loss, sequence_logprobs, token_entropy

torch.set_default_dtype(torch.float32)


def tiny_policy(P=3, M=5, k=4, seed=0):
    """P prompts, each a softmax over M possible "responses" with logits θ_p; k sampled responses each."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(P, M, generator=g, dtype=torch.float64)
    theta_ref = theta + 0.3 * torch.randn(P, M, generator=g, dtype=torch.float64)  # π_i ≠ π: log ratio ≠ 0
    ys = torch.randint(0, M, (P, k), generator=g)
    rewards = torch.randint(0, 2, (P, k), generator=g).to(torch.float64)
    rewards[0] = torch.tensor([1.0, 0.0, 0.0, 1.0])[:k]  # at least one group with a non-zero advantage
    return theta, theta_ref, ys, rewards


@pytest.mark.parametrize("tau", [0.0, 0.1, 2.0])
@pytest.mark.parametrize("P, M, k", [(3, 5, 4), (1, 2, 1), (2, 7, 3)])
def test_pmd_gradient_equals_closed_form(tau, P, M, k):
    theta, theta_ref, ys, rewards = tiny_policy(P, M, k, seed=P * 100 + M * 10 + k)
    theta = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, -1).gather(1, ys).reshape(-1)  # (P·k,), prompt-major
    logp_ref = torch.log_softmax(theta_ref, -1).gather(1, ys).reshape(-1)
    loss, stats = pmd_loss(logp, logp_ref, rewards.reshape(-1), tau=tau, group_size=k)
    loss.backward()

    # By hand: L = (1/N) Σ_j [−(r_j − r̄)·log π(y_j) + τ/2·(log π(y_j) − log π_i(y_j))²], N = P·k.
    # ∂L/∂θ_p = (1/N) Σ_{j in p} −(r_j − r̄_p − τ·(log π(y_j) − log π_i(y_j)))·(e_{y_j} − softmax(θ_p)),
    # i.e. minus the k1.5 Eq. 3 update direction, averaged over responses.
    with torch.no_grad():
        probs = torch.softmax(theta, -1)
        expected = torch.zeros_like(theta)
        N = P * k
        for p in range(P):
            rbar = rewards[p].mean()
            for j in range(k):
                y = ys[p, j]
                lp = math.log(probs[p, y])
                lr = lp - torch.log_softmax(theta_ref[p], -1)[y]
                coef = -(rewards[p, j] - rbar - tau * lr)
                grad_logp = -probs[p].clone()
                grad_logp[y] += 1.0
                expected[p] += coef * grad_logp / N
    assert torch.allclose(theta.grad, expected, rtol=1e-12, atol=1e-14), f"{tau=} {P=} {M=} {k=}"
    assert stats["reward_mean"] == pytest.approx(rewards.mean().item())
    log_ratio = (logp - logp_ref).detach()
    assert stats["log_ratio_mean"] == pytest.approx(log_ratio.mean().item())
    assert stats["loss_pg"] + stats["loss_kl"] == pytest.approx(loss.item())


def test_pmd_loss_value_and_group_ids_match_group_size():
    logp = torch.tensor([-1.0, -2.0, -3.0, -4.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-1.5, -2.0, -2.0, -4.5], dtype=torch.float64)
    r = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    tau = 0.4
    # groups {0,1}: r̄ = 0.5, advantages ±0.5; {2,3}: r̄ = 1, advantages 0
    terms = [-(0.5) * -1.0 + 0.2 * 0.25, 0.5 * -2.0 + 0.0, 0.0 + 0.2 * 1.0, 0.0 + 0.2 * 0.25]
    loss, _ = pmd_loss(logp, ref, r, tau, group_size=2)
    assert loss.item() == pytest.approx(sum(terms) / 4)
    perm = torch.tensor([2, 0, 3, 1])
    loss_ids, _ = pmd_loss(logp[perm], ref[perm], r[perm], tau, group_ids=torch.tensor([1, 0, 1, 0]))
    assert loss_ids.item() == pytest.approx(loss.item())
    with pytest.raises(ValueError, match="exactly one of group_size"):
        pmd_loss(logp, ref, r, tau)
    with pytest.raises(ValueError, match="not a multiple of group_size=3"):
        pmd_loss(logp, ref, r, tau, group_size=3)


def test_group_mean_with_ids():
    v = torch.tensor([1.0, 2.0, 3.0, 10.0])
    assert group_mean(v, group_ids=torch.tensor([5, 9, 5, 9])).tolist() == [2.0, 6.0, 2.0, 6.0]


def test_sequence_logprobs_shift_and_mask():
    g = torch.Generator().manual_seed(0)
    B, T, V = 3, 7, 11
    logits = torch.randn(B, T, V, generator=g)
    tokens = torch.randint(0, V, (B, T), generator=g)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, 3:] = True  # prompt of 3 tokens, response of 4
    mask[1, 1:4] = True  # response followed by padding
    mask[2, 6] = True  # a single response token
    got = sequence_logprobs(logits, tokens, mask)
    expected = []
    for b in range(B):
        total = 0.0
        for t in range(1, T):
            if mask[b, t]:  # token t is predicted by the logits at position t − 1
                row = logits[b, t - 1].double()
                total += (row[tokens[b, t]] - torch.logsumexp(row, 0)).item()
        expected.append(total)
    assert torch.allclose(got.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-5), (
        got,
        expected,
    )
    # a model that puts all its mass on the next token has log π(y|x) = 0
    sharp = torch.full((1, T, V), -1e4)
    for t in range(T - 1):
        sharp[0, t, tokens[0, t + 1]] = 0.0
    assert sequence_logprobs(sharp, tokens[:1], mask[:1]).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"response_mask\[:, 0\] must be False"):
        sequence_logprobs(logits, tokens, torch.ones(B, T, dtype=torch.bool))
    with pytest.raises(ValueError, match="must be 3-D"):
        sequence_logprobs(logits[0], tokens, mask)


def test_sequence_logprobs_bf16_logits_are_scored_in_float32():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 9, generator=g).to(torch.bfloat16)
    tokens = torch.randint(0, 9, (2, 5), generator=g)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[:, 0] = False
    got = sequence_logprobs(logits, tokens, mask)
    assert got.dtype == torch.float32
    assert torch.allclose(got, sequence_logprobs(logits.float(), tokens, mask))


def test_token_entropy():
    B, T, V = 2, 4, 8
    tokens = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[:, 2:] = True
    uniform = torch.zeros(B, T, V)
    assert token_entropy(uniform, tokens, mask).item() == pytest.approx(math.log(V))
    peaked = torch.full((B, T, V), -1e4)
    peaked[..., 0] = 0.0
    assert token_entropy(peaked, tokens, mask).item() == pytest.approx(0.0, abs=1e-6)
    # only the positions predicting response tokens (1 and 2 here) count
    mixed = peaked.clone()
    mixed[:, 1] = 0.0
    assert token_entropy(mixed, tokens, mask).item() == pytest.approx(math.log(V) / 2)
