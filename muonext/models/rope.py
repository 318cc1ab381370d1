"""Rotary position embedding for the `qk_rope_head_dim` part of MLA, as transformers' DeepseekV3 does it.

Legend: B batch, T tokens, H heads, R = qk_rope_head_dim, R2 = R // 2.

With `rope_interleave=True` (DeepSeek-V3 and Moonlight checkpoints) the pairs rotated together are
(x[2i], x[2i+1]); transformers de-interleaves them first, so the rotated vector comes out in the order
[even pairs rotated | odd pairs rotated]. We produce exactly that layout (queries and keys share it, so the
dot product is the same either way, and the cached rope keys are laid out like transformers' keys).
YaRN (`rope_scaling={"rope_type": "yarn", ...}`) follows `transformers.modeling_rope_utils`: blended
inverse frequencies and an `attention_factor` multiplied into cos and sin.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import MoonlightConfig


def yarn_get_mscale(scale: float = 1.0, mscale: float = 1.0) -> float:
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def rope_inv_freq(config: MoonlightConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (R2,) in fp32 and the attention factor multiplied into cos/sin."""
    dim, base = config.qk_rope_head_dim, config.rope_theta
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    rs = config.rope_scaling
    if rs is None:
        return 1.0 / pos_freqs, 1.0
    factor = rs["factor"]
    mscale, mscale_all_dim = rs.get("mscale"), rs.get("mscale_all_dim")
    attention_factor = rs.get("attention_factor")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_get_mscale(factor)
    beta_fast = rs.get("beta_fast") or 32
    beta_slow = rs.get("beta_slow") or 1
    orig_max = rs.get("original_max_position_embeddings") or config.max_position_embeddings

    def correction_dim(num_rot: float) -> float:
        return (dim * math.log(orig_max / (num_rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, float(attention_factor)


def attention_softmax_scale(config: MoonlightConfig) -> float:
    """(qk_nope + qk_rope)^-0.5, times mscale(factor, mscale_all_dim)^2 under YaRN (as transformers)."""
    scale = config.qk_head_dim**-0.5
    rs = config.rope_scaling
    if rs is not None and rs.get("mscale_all_dim", 0):
        m = yarn_get_mscale(rs["factor"], rs["mscale_all_dim"])
        scale = scale * m * m
    return scale


class RotaryEmbedding(nn.Module):
    """cos/sin tables (…, R2) for given positions; `inv_freq` is a non-persistent buffer."""

    inv_freq: torch.Tensor

    def __init__(self, config: MoonlightConfig) -> None:
        super().__init__()
        self.config = config
        inv_freq, self.attention_factor = rope_inv_freq(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def reset_parameters(self) -> None:
        """Recompute the table (after `to_empty`, which leaves buffers uninitialised)."""
        inv_freq, _ = rope_inv_freq(self.config)
        with torch.no_grad():
            self.inv_freq.copy_(inv_freq.to(self.inv_freq.device))

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B, T) -> cos, sin (B, T, R2), computed in fp32 then cast to `dtype`."""
        freqs = position_ids.to(torch.float32).unsqueeze(-1) * self.inv_freq.float()  # (B, T, R2)
        cos = freqs.cos() * self.attention_factor
        sin = freqs.sin() * self.attention_factor
        return cos.to(dtype), sin.to(dtype)


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool = True
) -> torch.Tensor:
    """Rotate x (..., R) with cos/sin broadcastable to (..., R2); output layout as transformers' (see top)."""
    if interleave:
        x1, x2 = x[..., 0::2], x[..., 1::2]
    else:
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
