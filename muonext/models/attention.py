"""Multi-head Latent Attention (DeepSeek-V2/V3 MLA), parameter names as transformers' DeepseekV3Attention.

Legend: B batch, T new tokens, S cached tokens (keys), H heads, D hidden_size, r kv_lora_rank,
Qn qk_nope_head_dim, R qk_rope_head_dim, R2 = R // 2, V v_head_dim, Qd = Qn + R.

Two ways to run it:
* `forward` (training, prefill): expand the latent with kv_b_proj into per-head keys/values and call
  `scaled_dot_product_attention`. Returns the latent too when asked, for the generation cache.
* `decode` (generation): the cache holds only the latent per token, `[kv_a_layernorm(c) | rope(k_rope)]`
  (r + R numbers per token per layer). With `absorb=True` (default) kv_b_proj's key half is folded into
  the query (q_nope·W_UK -> an r-dim query) and its value half into the output (attn·c -> ·W_UV), so
  attention runs directly against the latent as multi-query attention and nothing of size S·H is built.
  `absorb=False` re-expands the whole cache every step (kept to measure the difference; see bench).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .config import MoonlightConfig
from .layers import Linear, RMSNorm, fast_cpu_path
from .max_logits import MaxLogitRecorder
from .rope import apply_rope, attention_softmax_scale


class MLAttention(nn.Module):
    def __init__(self, config: MoonlightConfig) -> None:
        super().__init__()
        c = config
        self.num_heads, self.kv_lora_rank = c.num_attention_heads, c.kv_lora_rank
        self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim = (
            c.qk_nope_head_dim,
            c.qk_rope_head_dim,
            c.v_head_dim,
        )
        self.qk_head_dim = c.qk_head_dim
        self.q_lora_rank = c.q_lora_rank
        self.rope_interleave = c.rope_interleave
        self.dropout = c.attention_dropout
        H = c.num_attention_heads
        if c.q_lora_rank is None:
            self.q_proj = Linear(c.hidden_size, H * c.qk_head_dim, bias=False)
        else:
            self.q_a_proj = Linear(c.hidden_size, c.q_lora_rank, bias=c.attention_bias)
            self.q_a_layernorm = RMSNorm(c.q_lora_rank)
            self.q_b_proj = Linear(c.q_lora_rank, H * c.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = Linear(
            c.hidden_size, c.kv_lora_rank + c.qk_rope_head_dim, bias=c.attention_bias
        )
        self.kv_a_layernorm = RMSNorm(c.kv_lora_rank)
        self.kv_b_proj = Linear(c.kv_lora_rank, H * (c.qk_nope_head_dim + c.v_head_dim), bias=False)
        self.o_proj = Linear(H * c.v_head_dim, c.hidden_size, bias=c.attention_bias)
        self.scaling = attention_softmax_scale(c)
        # set by QKClip: the per-head max logit of training forwards is recorded (off: no cost)
        self.logit_recorder: MaxLogitRecorder | None = None

    # ------------------------------------------------------------------ shared pieces
    def _query(self, x_BTD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """-> q_nope (B, T, H, Qn), q_rope (B, T, H, R) rotated. cos/sin (B, T, R2)."""
        B, T, _ = x_BTD.shape
        if self.q_lora_rank is None:
            q = self.q_proj(x_BTD)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x_BTD)))
        q_BTHQ = q.view(B, T, self.num_heads, self.qk_head_dim)
        q_nope, q_rope = q_BTHQ.split([self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
        q_rope = apply_rope(q_rope, cos.unsqueeze(2), sin.unsqueeze(2), self.rope_interleave)
        return q_nope, q_rope

    def latent(self, x_BTD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The cached quantity: [kv_a_layernorm(c) | rope(k_rope)] (B, T, r + R)."""
        c_BTr, k_rope_BTR = self.kv_a_proj_with_mqa(x_BTD).split(
            [self.kv_lora_rank, self.qk_rope_head_dim], dim=-1
        )
        k_rope_BTR = apply_rope(k_rope_BTR, cos, sin, self.rope_interleave)
        return torch.cat((self.kv_a_layernorm(c_BTr), k_rope_BTR), dim=-1)

    def _expand(self, latent_BSL: torch.Tensor):
        """latent (B, S, r+R) -> keys (B, H, S, Qd), values (B, H, S, V)."""
        B, S, _ = latent_BSL.shape
        c_BSr, k_rope_BSR = latent_BSL.split([self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        kv = self.kv_b_proj(c_BSr).view(B, S, self.num_heads, self.qk_nope_head_dim + self.v_head_dim)
        k_nope, v = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        k = torch.cat(
            (k_nope, k_rope_BSR.unsqueeze(2).expand(B, S, self.num_heads, self.qk_rope_head_dim)), dim=-1
        )
        return k.transpose(1, 2), v.transpose(1, 2)

    # ------------------------------------------------------------------ training / prefill
    def forward(
        self,
        x_BTD: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        return_latent: bool = False,
    ):
        """x (B, T, D); attn_mask None (causal) or bool (B, 1, T, T), True = attend.

        Returns out (B, T, D), and latent (B, T, r+R) when `return_latent`.
        """
        B, T, _ = x_BTD.shape
        q_nope, q_rope = self._query(x_BTD, cos, sin)
        latent = self.latent(x_BTD, cos, sin)
        k_BHTQ, v_BHTV = self._expand(latent)
        q_BHTQ = torch.cat((q_nope, q_rope), dim=-1).transpose(1, 2)
        if self.logit_recorder is not None and self.training:
            self.logit_recorder.update(q_BHTQ, k_BHTQ, self.scaling, attn_mask, is_causal=attn_mask is None)
        o_BHTV = F.scaled_dot_product_attention(
            q_BHTQ,
            k_BHTQ,
            v_BHTV,
            attn_mask=attn_mask,
            is_causal=attn_mask is None,
            dropout_p=self.dropout if self.training else 0.0,
            scale=self.scaling,
        )
        out = self.o_proj(o_BHTV.transpose(1, 2).reshape(B, T, self.num_heads * self.v_head_dim))
        return (out, latent) if return_latent else out

    # ------------------------------------------------------------------ generation
    def decode(
        self,
        x_BTD: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache_BSL: torch.Tensor,
        start: int,
        mask_BTS: torch.Tensor,
        absorb: bool = True,
    ) -> torch.Tensor:
        """Attend T new tokens against the latent cache.

        Writes the new latents into `cache_BSL[:, start:start+T]` and attends over `cache_BSL[:, :start+T]`.
        mask_BTS: additive float mask (B, T, start+T) (0 = attend, -inf = not).
        """
        B, T, _ = x_BTD.shape
        H, r = self.num_heads, self.kv_lora_rank
        q_nope, q_rope = self._query(x_BTD, cos, sin)
        cache_BSL[:, start : start + T] = self.latent(x_BTD, cos, sin)
        kv_BSL = cache_BSL[:, : start + T]
        S = kv_BSL.shape[1]
        if not absorb:
            k, v = self._expand(kv_BSL)
            q = torch.cat((q_nope, q_rope), dim=-1).transpose(1, 2)
            o = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask_BTS.unsqueeze(1).to(q.dtype), scale=self.scaling
            )
            return self.o_proj(o.transpose(1, 2).reshape(B, T, H * self.v_head_dim))
        if T == 1 and fast_cpu_path(x_BTD, self.kv_b_proj.weight):  # a decode step on CPU: one fused op
            o_BX = ops.mla_decode_attention(
                q_nope[:, 0], q_rope[:, 0], kv_BSL, self.kv_b_proj.weight, mask_BTS[:, 0], self.scaling
            )
            return self.o_proj(o_BX.view(B, 1, -1))
        w_HXr = self.kv_b_proj.weight.view(H, self.qk_nope_head_dim + self.v_head_dim, r)
        w_uk_HNr, w_uv_HVr = w_HXr.split([self.qk_nope_head_dim, self.v_head_dim], dim=1)
        # q_nope · W_UK: (H, B*T, Qn) @ (H, Qn, r) -> (H, B*T, r)
        q_lat = torch.bmm(q_nope.reshape(B * T, H, -1).transpose(0, 1), w_uk_HNr)
        q_lat_BTHr = q_lat.transpose(0, 1).view(B, T, H, r)
        q_BXL = torch.cat((q_lat_BTHr, q_rope), dim=-1).view(B, T * H, r + self.qk_rope_head_dim)
        scores = torch.bmm(q_BXL, kv_BSL.transpose(1, 2)).view(B, T, H, S) * self.scaling
        scores = scores + mask_BTS.unsqueeze(2).to(scores.dtype)
        p_BXS = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
        p_BXS = p_BXS.to(q_BXL.dtype).view(B, T * H, S)
        o_lat = torch.bmm(p_BXS, kv_BSL[..., :r])  # (B, T*H, r)
        # attn·c · W_UV^T: (H, B*T, r) @ (H, r, V) -> (H, B*T, V)
        o_HXV = torch.bmm(o_lat.view(B * T, H, r).transpose(0, 1), w_uv_HVr.transpose(1, 2))
        return self.o_proj(o_HXV.transpose(0, 1).reshape(B, T, H * self.v_head_dim))
