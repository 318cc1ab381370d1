"""Pure-PyTorch references of every muonext op: the oracle in the tests and the fallback in use.

They follow the same numerics contract as the kernels (fp32 accumulation, one rounding to the
storage dtype) on any device and dtype, so a kernel and its reference differ only by summation order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def newton_schulz_ref(X: Tensor, coefficients: Sequence[float], eps: float) -> Tensor:
    """Newton–Schulz orthogonalisation of X (rows, cols) or (batch, rows, cols) in X's dtype.

    coefficients is flat: [a0, b0, c0, a1, b1, c1, ...]. Tall matrices are transposed so the Gram
    matrix is the small one; each matrix is scaled by 1 / (‖X‖_F + eps) first.
    """
    x3 = X.unsqueeze(0) if X.dim() == 2 else X
    tall = x3.size(-2) > x3.size(-1)
    x = x3.mT if tall else x3
    acc = _acc_dtype(X.dtype)
    norm = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True, dtype=acc)
    x = (x.to(acc) / (norm + eps)).to(X.dtype)
    for i in range(0, len(coefficients), 3):
        a, b, c = coefficients[i : i + 3]
        gram = x @ x.mT
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, poly, x, beta=a, alpha=1.0)
    out = (x.mT if tall else x).contiguous()
    return out.squeeze(0) if X.dim() == 2 else out


def newton_schulz_grouped_ref(Xs: Sequence[Tensor], coefficients: Sequence[float], eps: float) -> list[Tensor]:
    """newton_schulz_ref of each member of a group (matrices or batches of any shapes)."""
    return [newton_schulz_ref(x, coefficients, eps) for x in Xs]


def muon_momentum_ref(
    bufs: Sequence[Tensor], grads: Sequence[Tensor], outs: Sequence[Tensor], momentum: float, nesterov: bool
) -> None:
    """bufs ← μ·bufs + grads (sum form); outs ← grads + μ·bufs (Nesterov) or bufs, in outs' dtypes."""
    for buf, grad, out in zip(bufs, grads, outs):
        acc = _acc_dtype(buf.dtype)
        g = grad.to(acc)
        m = buf.to(acc) * momentum + g
        buf.copy_(m)
        out.copy_(g + momentum * m if nesterov else m)


def muon_apply_ref(
    params: Sequence[Tensor],
    updates: Sequence[Tensor],
    lrs: Sequence[float],
    weight_decays: Sequence[float],
    scales: Sequence[float],
) -> None:
    """params ← params·(1 − lr·wd) − lr·scale·updates."""
    for p, u, lr, wd, s in zip(params, updates, lrs, weight_decays, scales):
        acc = _acc_dtype(p.dtype)
        p.copy_(p.to(acc) * (1.0 - lr * wd) - (lr * s) * u.to(acc))


def pack_ref(tensors: Sequence[Tensor], offsets: Sequence[int], lengths: Sequence[int], dtype: torch.dtype) -> Tensor:
    """Concatenates the element ranges [offset, offset + length) of each tensor (row-major), cast to dtype."""
    device = tensors[0].device if len(tensors) else torch.device("cpu")
    parts = [t.reshape(-1)[o : o + n].to(dtype) for t, o, n in zip(tensors, offsets, lengths)]
    return torch.cat(parts) if parts else torch.empty(0, dtype=dtype, device=device)


def unpack_ref(flat: Tensor, outs: Sequence[Tensor], offsets: Sequence[int], lengths: Sequence[int]) -> None:
    """Writes consecutive pieces of flat into the element ranges of outs (inverse of pack_ref)."""
    start = 0
    for out, o, n in zip(outs, offsets, lengths):
        view = out.view(-1) if out.is_contiguous() else None
        piece = flat[start : start + n].to(out.dtype)
        if view is not None:
            view[o : o + n].copy_(piece)
        else:
            tmp = out.contiguous().view(-1)
            tmp[o : o + n].copy_(piece)
            out.copy_(tmp.view_as(out))
        start += n


def skinny_linear_ref(x: Tensor, weight: Tensor) -> Tensor:
    """x (..., K) · weight (N, K)ᵀ."""
    return torch.nn.functional.linear(x, weight)


def grouped_skinny_linear_ref(x: Tensor, weight: Tensor, counts: Tensor) -> Tensor:
    """Rows of x (M, K), sorted by group with counts[g] rows in group g, times weight[g] (N, K)ᵀ."""
    pieces = x.split([int(n) for n in counts.tolist()])
    if not pieces:
        return x.new_empty(0, weight.shape[1])
    return torch.cat([p @ w.t() for p, w in zip(pieces, weight)])


def mla_decode_attention_ref(
    q_nope: Tensor, q_rope: Tensor, cache: Tensor, kv_b_weight: Tensor, mask: Tensor, scale: float
) -> Tensor:
    """One query per sequence against its latent cache, kv_b_proj absorbed (see MLAttention.decode).

    q_nope (B, H, Qn), q_rope (B, H, R), cache (B, S, r + R) = [c | k_rope], kv_b_weight (H·(Qn + V), r),
    mask (B, S) additive -> (B, H·V).
    """
    B, H, Qn = q_nope.shape
    r = kv_b_weight.shape[1]
    w = kv_b_weight.view(H, -1, r)
    w_uk, w_uv = w[:, :Qn], w[:, Qn:]
    c, k_rope = cache[..., :r], cache[..., r:]
    q_lat = torch.einsum("bhq,hqr->bhr", q_nope, w_uk)
    scores = (torch.einsum("bhr,bsr->bhs", q_lat, c) + torch.einsum("bhk,bsk->bhs", q_rope, k_rope)) * scale
    p = torch.softmax(scores + mask[:, None, :], dim=-1)
    return torch.einsum("bhs,bsr,hvr->bhv", p, c, w_uv).reshape(B, -1)


def rms_norm_rows_ref(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x / sqrt(mean(x²) + eps) · weight over the last dimension."""
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)


def logsumexp_argmax_ref(logits: Tensor) -> tuple[Tensor, Tensor]:
    """(logsumexp, argmax) of each row of (B, V) logits."""
    return torch.logsumexp(logits, -1), logits.argmax(-1)
