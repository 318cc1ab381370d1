"""Per-head maximum pre-softmax attention logit, S_max^h (MuonClip, Kimi K2): what QK-clip bounds.

The score is q·k times the softmax scale, over the positions the head may attend to (the causal or given
mask), maximised over the batch, the queries and the keys. It is recomputed from q and k under no_grad,
in blocks of queries so that no score matrix of the whole sequence is ever held (a causal block stops at
its last query's key); fused attention kernels (SDPA, flash) do not return their scores.
"""

from __future__ import annotations

import torch
from torch import Tensor

# score elements per block: bounds the transient memory whatever the sequence length. CPU: 16 MiB of
# fp32 (cache-sized); GPUs: 512 MiB, few enough blocks that kernel launches do not dominate (Moonlight,
# 64 heads x 8192 tokens: 32 blocks per layer). The fp32 copies of q and k add 2·B·H·T·D·4 bytes.
BLOCK_ELEMENTS = 1 << 22
BLOCK_ELEMENTS_GPU = 1 << 27


@torch.no_grad()
def max_logits_per_head(
    q_BHTD: Tensor, k_BKSD: Tensor, scale: float, attn_mask: Tensor | None = None, is_causal: bool = False
) -> Tensor:
    """-> (H,) float32: max over b, t, s of scale · q[b, h, t] · k[b, h // G, s] where attending is allowed.

    q (B, H, T, D); k (B, K, S, D) with K dividing H (grouped-query attention: query head h reads key head
    h // (H // K), as transformers' `repeat_kv`). attn_mask: bool (True = attend) or additive float,
    broadcastable to (B, H, T, S); is_causal (with no mask): query t sees keys s <= t, as SDPA's.
    """
    B, H, T, D = q_BHTD.shape
    K, S = k_BKSD.shape[1], k_BKSD.shape[2]
    if H % K:
        raise ValueError(f"max_logits_per_head: query heads ({H}) must be a multiple of key heads ({K})")
    G = H // K
    with torch.autocast(q_BHTD.device.type, enabled=False):
        k32 = k_BKSD.float().unsqueeze(2)  # (B, K, 1, S, D)
        q32 = q_BHTD.float().view(B, K, G, T, D)
        best = torch.full((K, G), float("-inf"), device=q_BHTD.device)
        budget = BLOCK_ELEMENTS if q_BHTD.device.type == "cpu" else BLOCK_ELEMENTS_GPU
        rows = max(1, budget // max(1, B * H * S))
        for t0 in range(0, T, rows):
            t1 = min(T, t0 + rows)
            s_end = min(S, t1) if is_causal and attn_mask is None else S
            scores = torch.matmul(q32[:, :, :, t0:t1], k32[..., :s_end, :].transpose(-1, -2)) * scale
            if attn_mask is not None:
                scores = _apply_mask(scores, attn_mask, B, K, G, t0, t1, s_end)
            elif is_causal:
                t = torch.arange(t0, t1, device=scores.device).view(-1, 1)
                scores = scores.masked_fill(torch.arange(s_end, device=scores.device) > t, float("-inf"))
            best = torch.maximum(best, scores.amax(dim=(0, 3, 4)))
    return best.reshape(H)


def _apply_mask(scores: Tensor, mask: Tensor, B: int, K: int, G: int, t0: int, t1: int, s_end: int) -> Tensor:
    """scores (B, K, G, t1-t0, s_end) under the rows t0:t1 of `mask` (…, T, S) broadcast over heads."""
    m = mask[..., t0:t1, :s_end]
    if m.dim() < 4:  # (T, S) or (B, T, S)
        m = m[None, None] if m.dim() == 2 else m[:, None]
    # (B|1, H|1, rows, S) -> (B|1, K|1, G|1, rows, S), splitting the head dim as the scores are split
    m = m.reshape(m.shape[0], K, G, *m.shape[2:]) if m.shape[1] != 1 else m.unsqueeze(2)
    if m.dtype == torch.bool:
        return scores.masked_fill(~m, float("-inf"))
    return scores + m.float()


class MaxLogitRecorder:
    """The running per-head max over the training forwards since the last `take()` (all micro-batches of
    one optimizer step, and any recomputation of them, which gives the same values)."""

    def __init__(self) -> None:
        self.value: Tensor | None = None

    def update(self, q: Tensor, k: Tensor, scale: float, attn_mask: Tensor | None, is_causal: bool) -> None:
        m = max_logits_per_head(q, k, scale, attn_mask, is_causal)
        self.value = m if self.value is None else torch.maximum(self.value, m)

    def take(self) -> Tensor | None:
        value, self.value = self.value, None
        return value
