"""The Moonlight model: DeepSeek-V3 decoder (MLA + MoE), parameter names as transformers' DeepseekV3ForCausalLM.

Legend: B batch, T tokens, D hidden_size, V vocab_size, L layers, S cache slots, Lat = kv_lora_rank + R.

Parameter names group easily: `model.embed_tokens.weight`, `lm_head.weight`, every norm has "norm" in its
name, the router bias is a buffer (`mlp.gate.e_score_correction_bias`), routed experts are 3-D
(`mlp.experts.{gate,up,down}_proj`, (E, out, in)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MLAttention
from .config import MoonlightConfig
from .layers import MLP, Linear, RMSNorm
from .moe import MoE, update_bias
from .rope import RotaryEmbedding


@dataclass
class MoonlightOutput:
    """logits (B, T', V); loss = lm_loss + aux_loss (None without labels); aux_loss None when off."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


class DecoderLayer(nn.Module):
    def __init__(self, config: MoonlightConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = MLAttention(config)
        self.is_moe = config.is_moe_layer(layer_idx)
        self.mlp = MoE(config) if self.is_moe else MLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def _mlp(self, h: torch.Tensor, mask_BT: torch.Tensor | None):
        x = self.post_attention_layernorm(h)
        if self.is_moe:
            y, aux = self.mlp(x, mask_BT)
            return h + y, aux
        return h + self.mlp(x), None

    def forward(self, x_BTD, cos, sin, attn_mask=None, mask_BT=None, return_latent=False):
        a = self.self_attn(self.input_layernorm(x_BTD), cos, sin, attn_mask, return_latent)
        a, latent = a if return_latent else (a, None)
        h, aux = self._mlp(x_BTD + a, mask_BT)
        return h, aux, latent

    def decode(self, x_BTD, cos, sin, cache_BSL, start, mask_BTS, absorb=True):
        h = x_BTD + self.self_attn.decode(
            self.input_layernorm(x_BTD), cos, sin, cache_BSL, start, mask_BTS, absorb
        )
        return self._mlp(h, None)[0]


class MoonlightModel(nn.Module):
    def __init__(self, config: MoonlightConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)

    def forward(self, input_ids, attention_mask=None, position_ids=None, latents_out: list | None = None):
        """-> (hidden (B, T, D), summed aux loss or None). `latents_out` collects each layer's (B, T, Lat)."""
        B, T = input_ids.shape
        x = self.embed_tokens(input_ids)
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device).unsqueeze(0).expand(B, T)
        cos, sin = self.rotary_emb(position_ids, x.dtype)
        attn_mask, mask_BT = None, None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask_BT = attention_mask
            attn_mask = padded_causal_mask(attention_mask)
        aux_total = None
        for layer in self.layers:
            x, aux, latent = layer(x, cos, sin, attn_mask, mask_BT, latents_out is not None)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
            if latents_out is not None:
                latents_out.append(latent)
        return self.norm(x), aux_total

    def decode(self, input_ids, position_ids, cache_LBSL, start, mask_BTS, absorb=True):
        """T new tokens per sequence against the latent cache (see MLAttention.decode) -> hidden (B, T, D)."""
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary_emb(position_ids, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer.decode(x, cos, sin, cache_LBSL[i], start, mask_BTS, absorb)
        return self.norm(x)


def padded_causal_mask(attention_mask_BT: torch.Tensor) -> torch.Tensor:
    """bool (B, 1, T, T): causal and key is a real token; each query also sees itself (no empty rows)."""
    T = attention_mask_BT.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=attention_mask_BT.device).tril()
    mask = causal & attention_mask_BT.bool()[:, None, None, :]
    return mask | torch.eye(T, dtype=torch.bool, device=attention_mask_BT.device)


class MoonlightForCausalLM(nn.Module):
    def __init__(self, config: MoonlightConfig) -> None:
        """Built on the meta device, then allocated on the default device and initialised once by
        `reset_parameters` (the layers' own default inits never run, so the random stream is the same
        whether the model is built whole here or sharded first and materialised by
        `muonext.parallel.materialize`). Under `torch.device("meta")` it stays on meta."""
        super().__init__()
        self.config = config
        device = torch.get_default_device()
        with torch.device("meta"):
            self.model = MoonlightModel(config)
            self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if device.type != "meta":
            self.to_empty(device=device)
            self.tie_weights()
            self.reset_parameters()
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share lm_head with embed_tokens when `tie_word_embeddings` (again after `to_empty`, which unties)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, initializer_range) for matrices and embeddings, ones for norms, zero router bias."""
        for name, p in self.named_parameters():
            self.init_parameter_(name, p)
        self.reset_buffers()

    @torch.no_grad()
    def init_parameter_(self, name: str, t: torch.Tensor) -> None:
        """Fills `t`, the whole parameter `name`, as `reset_parameters` does (one draw from the global
        random stream per matrix, in `named_parameters` order)."""
        if "norm" in name:
            t.fill_(1.0)
            return
        t.normal_(0.0, self.config.initializer_range)
        if name == "model.embed_tokens.weight" and self.config.pad_token_id is not None:
            t[self.config.pad_token_id].zero_()

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Router biases to zero, load counters cleared, RoPE tables recomputed (after `to_empty`)."""
        for moe in self.moe_layers():
            moe.gate.e_score_correction_bias.zero_()
            moe.reset_load()
        self.model.rotary_emb.reset_parameters()

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> MoonlightOutput:
        """input_ids (B, T); attention_mask (B, T) 1 = token, 0 = padding; labels (B, T), −100 = ignore.

        Loss: mean cross-entropy of logits[:, t] against labels[:, t+1] (fp32), plus the aux loss when
        `aux_loss_alpha > 0` in training mode. `logits_to_keep=k>0` computes logits for the last k only.
        """
        if labels is not None and logits_to_keep:
            raise ValueError("forward: logits_to_keep must be 0 when labels are given")
        hidden, aux = self.model(input_ids, attention_mask, position_ids)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        lm_loss = loss = None
        if labels is not None:
            # shift the labels, not the logits: slicing the (B, T, V) logits costs a copy and a
            # full-size zero-filled gradient in backward
            shifted = F.pad(labels[:, 1:], (0, 1), value=-100)
            lm_loss = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=-100
            )
            loss = lm_loss if aux is None else lm_loss + aux
        return MoonlightOutput(logits=logits, loss=loss, lm_loss=lm_loss, aux_loss=aux)

    # ------------------------------------------------------------------ load balancing
    def moe_layers(self) -> list[MoE]:
        return [layer.mlp for layer in self.model.layers if layer.is_moe]

    def expert_loads(self, accumulated: bool = True) -> torch.Tensor:
        """(L_moe, E) tokens per expert: summed since the last bias update, or of the last forward."""
        rows = [
            m.load_accum
            if accumulated
            else (m.last_load if m.last_load is not None else torch.zeros_like(m.load_accum))
            for m in self.moe_layers()
        ]
        if not rows:
            return torch.zeros(0, self.config.n_routed_experts)
        return torch.stack([r.to(device="cpu", dtype=torch.float64) for r in rows])

    @torch.no_grad()
    def update_router_bias(self, rate: float = 1e-3, loads: torch.Tensor | None = None) -> dict[str, float]:
        """Aux-loss-free balancing step; call after each optimizer step.

        b ← b + rate·(sign(e) − mean(sign(e))), e = mean load − load (overloaded experts' bias goes down).
        `loads` (L_moe, E) defaults to the counts accumulated by training forwards since the last call
        (all-reduce them first under data parallelism). Resets the accumulators; returns load statistics.
        """
        if loads is None:
            loads = self.expert_loads(accumulated=True)
        stats = self.expert_load_stats(loads)
        for moe, load in zip(self.moe_layers(), loads):
            update_bias(
                moe.gate.e_score_correction_bias, load.to(moe.gate.e_score_correction_bias.device), rate
            )
            moe.reset_load()
        return stats

    def expert_load_stats(self, loads: torch.Tensor | None = None) -> dict[str, float]:
        """Per MoE layer max/mean load and MaxVio = (max − mean)/mean; plus the mean MaxVio over layers."""
        if loads is None:
            loads = self.expert_loads(accumulated=True)
        stats: dict[str, float] = {}
        vios = []
        for i, (layer, load) in enumerate(zip(self.moe_layer_indices(), loads)):
            mean = float(load.mean())
            if mean <= 0:
                continue
            vio = (float(load.max()) - mean) / mean
            vios.append(vio)
            stats[f"moe/layer{layer}/max_over_mean"] = float(load.max()) / mean
            stats[f"moe/layer{layer}/min_over_mean"] = float(load.min()) / mean
        if vios:
            stats["moe/maxvio"] = sum(vios) / len(vios)
        return stats

    def moe_layer_indices(self) -> list[int]:
        return [i for i, layer in enumerate(self.model.layers) if layer.is_moe]

    # ------------------------------------------------------------------ parameter counts
    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        skip = {id(self.model.embed_tokens.weight), id(self.lm_head.weight)} if exclude_embeddings else set()
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) in seen or id(p) in skip:
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def num_activated_parameters(self, exclude_embeddings: bool = True) -> int:
        """Parameters used per token: everything except the routed experts not among the top-k."""
        c = self.config
        idle = 0
        for moe in self.moe_layers():
            stacks = (moe.experts.gate_proj, moe.experts.up_proj, moe.experts.down_proj)
            per_expert = sum(w.shape[1] * w.shape[2] for w in stacks)  # shapes: indexing a DTensor gathers it
            idle += per_expert * (c.n_routed_experts - c.num_experts_per_tok)
        return self.num_parameters(exclude_embeddings) - idle
