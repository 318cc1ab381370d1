"""The k1.5 policy-mirror-descent loss, sequence log-probabilities and token entropy.

k1.5 (Sec. 2.3.2) maximises expected reward with a KL tie to the policy of the current iteration π_i.
With k samples y_1..y_k of a prompt x and their rewards r_j, the per-response surrogate is

    L_j = −(r_j − r̄)·log π(y_j|x) + (τ/2)·(log π(y_j|x) − log π_i(y_j|x))²

with r̄ the mean reward of the k samples (the baseline: no value network). Its gradient is

    ∇L_j = −(r_j − r̄ − τ·(log π(y_j|x) − log π_i(y_j|x)))·∇log π(y_j|x),

which is the negative of the paper's Eq. 3 update direction, so gradient descent on the mean of L_j
follows it. π_i is fixed during the iteration: `logp_ref` is treated as a constant (detached), as are
the rewards. Log-probabilities are of whole responses (sums over response tokens), as in the paper.

Shapes: B sequences, T tokens, V vocabulary. Batches are prompt-major: with ``group_size=k`` the k
samples of prompt p sit at rows p·k … p·k+k−1; ``group_ids`` allows any order.
"""

from __future__ import annotations

import torch


def _shifted(logits_BTV: torch.Tensor, tokens_BT: torch.Tensor, mask_BT: torch.Tensor):
    if logits_BTV.dim() != 3:
        raise ValueError(f"logits must be 3-D (batch, time, vocab), got shape {list(logits_BTV.shape)}")
    if tokens_BT.shape != logits_BTV.shape[:2] or mask_BT.shape != tokens_BT.shape:
        raise ValueError(
            f"tokens {list(tokens_BT.shape)} and response_mask {list(mask_BT.shape)} must both "
            f"be logits.shape[:2] = {list(logits_BTV.shape[:2])}"
        )
    if bool(mask_BT[:, 0].any()):
        raise ValueError("response_mask[:, 0] must be False: the first token has no logits predicting it")
    # Position t predicts token t+1: pair logits[:, :-1] with tokens[:, 1:] and the mask of those tokens.
    return logits_BTV[:, :-1].float(), tokens_BT[:, 1:], mask_BT[:, 1:].to(torch.float32)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """(B, T−1) log-prob of tokens[:, 1:] under logits[:, :-1] (float32), 0 outside the response."""
    logits_BSV, next_BS, mask_BS = _shifted(logits, tokens, response_mask)
    picked_BS = logits_BSV.gather(-1, next_BS.unsqueeze(-1)).squeeze(-1)
    return (picked_BS - torch.logsumexp(logits_BSV, dim=-1)) * mask_BS


def sequence_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """(B,) log π(y|x): the sum of the log-probs of the response tokens.

    `logits` (B, T, V) are the model outputs for `tokens` (B, T) = prompt + response (+ padding);
    ``logits[:, t]`` predicts ``tokens[:, t + 1]``. `response_mask` (B, T) is True at the response tokens
    *in token coordinates* (mask[b, t] says whether tokens[b, t] is scored), so mask[:, 0] must be False.
    Computed in float32 whatever the logits' dtype.
    """
    return token_logprobs(logits, tokens, response_mask).sum(dim=-1)


@torch.no_grad()
def token_entropy(logits: torch.Tensor, tokens: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the predictive distributions that produced the response tokens (logging)."""
    logits_BSV, _, mask_BS = _shifted(logits, tokens, response_mask)
    logp_BSV = torch.log_softmax(logits_BSV, dim=-1)
    ent_BS = -(logp_BSV.exp() * logp_BSV).sum(-1)
    return (ent_BS * mask_BS).sum() / mask_BS.sum().clamp_min(1.0)


def group_mean(
    values: torch.Tensor, group_size: int | None = None, group_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """(N,) mean of `values` over each element's group (prompt), broadcast back to every element."""
    if (group_size is None) == (group_ids is None):
        raise ValueError("give exactly one of group_size (prompt-major batches) and group_ids")
    n = values.shape[0]
    if group_size is not None:
        if group_size <= 0 or n % group_size:
            raise ValueError(f"batch of {n} is not a multiple of group_size={group_size}")
        return values.view(-1, group_size).mean(dim=1).repeat_interleave(group_size)
    if group_ids.shape != values.shape:
        raise ValueError(f"group_ids shape {list(group_ids.shape)} must equal {list(values.shape)}")
    _, inverse = torch.unique(group_ids, return_inverse=True)
    sums = torch.zeros(int(inverse.max()) + 1, dtype=values.dtype, device=values.device).index_add_(
        0, inverse, values
    )
    counts = torch.bincount(inverse).to(values.dtype)
    return (sums / counts)[inverse]


def pmd_loss(
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    rewards: torch.Tensor,
    tau: float,
    group_size: int | None = None,
    group_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over responses of −(r − r̄)·log π + (τ/2)·(log π − log π_i)², and statistics for logging.

    `logp` (N,) carries the gradient; `logp_ref` (N,) = log π_i and `rewards` (N,) are constants.
    Stats: reward mean, mean |advantage|, mean and RMS of log(π/π_i), and the two loss terms.
    """
    if logp.dim() != 1 or logp_ref.shape != logp.shape or rewards.shape != logp.shape:
        raise ValueError(
            f"logp, logp_ref and rewards must be the same 1-D shape, got {list(logp.shape)}, "
            f"{list(logp_ref.shape)}, {list(rewards.shape)}"
        )
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    rewards = rewards.detach().to(logp.dtype)
    advantage = rewards - group_mean(rewards, group_size, group_ids)
    log_ratio = logp - logp_ref.detach().to(logp.dtype)
    pg = -(advantage * logp).mean()
    kl = 0.5 * tau * log_ratio.pow(2).mean()
    loss = pg + kl
    with torch.no_grad():
        stats = {
            "reward_mean": rewards.mean().item(),
            "advantage_abs_mean": advantage.abs().mean().item(),
            "log_ratio_mean": log_ratio.mean().item(),
            "log_ratio_rms": log_ratio.pow(2).mean().sqrt().item(),
            "loss_pg": pg.item(),
            "loss_kl": kl.item(),
        }
    return loss, stats
