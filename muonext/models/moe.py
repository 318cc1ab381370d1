"""DeepSeek-V3 MoE: sigmoid router with bias-corrected group-limited top-k, routed experts stored as
3-D tensors, shared experts, aux-loss-free load balancing and the optional sequence-wise aux loss.

Legend: B batch, T tokens per sequence, N = B*T tokens, D hidden_size, E routed experts, K experts per
token, I moe_intermediate_size, G n_group, M = N*K token-expert assignments.

Expert weights are (E, out, in): `gate_proj` (E, I, D), `up_proj` (E, I, D), `down_proj` (E, D, I), so
Muon sees E independent matrices and orthogonalises them as one batch. Dispatch sorts the M assignments by
expert and runs each expert on its contiguous slice (`torch._grouped_mm` on CUDA in bf16/fp16, a loop over
experts on CPU); no Python loop over tokens.

Load balancing without an aux loss (DeepSeek-V3 §2.1.2, Wang et al. 2024): the router bias
`e_score_correction_bias` b only changes which experts are *selected*, never the gate weights. After each
optimizer step the trainer calls `update_router_bias` with the observed loads c_i (tokens per expert);
with e_i = mean(c) − c_i, b ← b + u·(sign(e) − mean(sign(e))). An overloaded expert (c_i > mean) has
e_i < 0, so its bias goes down and it is picked less; subtracting the mean keeps Σb unchanged.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .config import MoonlightConfig
from .layers import MLP, linear, use_skinny


@dataclass
class Routing:
    """Router output. idx_NK int64, weight_NK fp32 (normalised, scaled), scores_NE fp32 sigmoid scores."""

    idx_NK: torch.Tensor
    weight_NK: torch.Tensor
    scores_NE: torch.Tensor


class Router(nn.Module):
    """Named `gate` in the checkpoint: `gate.weight` (E, D) and the buffer `gate.e_score_correction_bias` (E,)."""

    e_score_correction_bias: torch.Tensor

    def __init__(self, config: MoonlightConfig) -> None:
        super().__init__()
        self.top_k, self.n_experts = config.num_experts_per_tok, config.n_routed_experts
        self.n_group, self.topk_group = config.n_group, config.topk_group
        self.norm_topk_prob, self.routed_scaling_factor = config.norm_topk_prob, config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.hidden_size))
        self.register_buffer(
            "e_score_correction_bias", torch.zeros(config.n_routed_experts, dtype=torch.float32)
        )

    @torch.no_grad()
    def select(self, scores_NE: torch.Tensor) -> torch.Tensor:
        """Group-limited top-k on scores + bias -> expert indices (N, K).

        Experts outside the `topk_group` best groups (group score = sum of its 2 best biased scores) are
        excluded with −inf. transformers 4.57 (and the DeepSeek/Moonlight remote code) fill them with 0.0
        instead, which can pick an excluded expert when biased scores go negative; see the tests.
        """
        biased = scores_NE + self.e_score_correction_bias.to(scores_NE.dtype)
        if self.n_group > 1:
            N = biased.shape[0]
            per = self.n_experts // self.n_group
            group_NG = biased.view(N, self.n_group, per).topk(min(2, per), dim=-1).values.sum(-1)
            keep_NG = torch.zeros_like(group_NG, dtype=torch.bool)
            keep_NG.scatter_(1, group_NG.topk(self.topk_group, dim=-1, sorted=False).indices, True)
            keep_NE = keep_NG.unsqueeze(-1).expand(N, self.n_group, per).reshape(N, self.n_experts)
            biased = biased.masked_fill(~keep_NE, float("-inf"))
        return biased.topk(self.top_k, dim=-1, sorted=False).indices

    def forward(self, x_ND: torch.Tensor) -> Routing:
        dt = torch.promote_types(x_ND.dtype, torch.float32)  # fp32 router (fp64 when the model is fp64)
        scores_NE = linear(x_ND.to(dt), self.weight.to(dt)).sigmoid()
        idx_NK = self.select(scores_NE)
        w_NK = scores_NE.gather(1, idx_NK)
        if self.norm_topk_prob:
            w_NK = w_NK / (w_NK.sum(-1, keepdim=True) + 1e-20)
        return Routing(idx_NK, w_NK * self.routed_scaling_factor, scores_NE)


class RoutedExperts(nn.Module):
    """E SwiGLU experts as 3-D weights; runs M sorted assignments given tokens-per-expert counts."""

    _grouped_mm_failed = False
    dispatch = "auto"  # "auto" | "loop" | "padded" (CPU/fp32 paths; set on an instance to force one)

    def __init__(self, config: MoonlightConfig) -> None:
        super().__init__()
        E, D, I = config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
        self.gate_proj = nn.Parameter(torch.empty(E, I, D))
        self.up_proj = nn.Parameter(torch.empty(E, I, D))
        self.down_proj = nn.Parameter(torch.empty(E, D, I))

    def _use_grouped_mm(self, x: torch.Tensor) -> bool:
        return (
            x.is_cuda
            and hasattr(torch, "_grouped_mm")
            and not RoutedExperts._grouped_mm_failed
            and x.dtype in (torch.bfloat16, torch.float16)
            and all(s % 8 == 0 for s in self.down_proj.shape[1:])
        )

    def forward(
        self, x_MD: torch.Tensor, counts_E: torch.Tensor, expert_M: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x_MD: assignments sorted by expert; counts_E: how many each expert got; expert_M: the expert of
        each sorted assignment (enables the padded-bmm path). -> (M, D) expert outputs, same order.

        Under expert parallelism the weights are DTensors sharded by expert and the inputs are the
        assignments of this rank's experts only (see `MoE.expert_parallel`): the local stacks are used."""
        gate_EID, up_EID, down_EDI = (_local(w) for w in (self.gate_proj, self.up_proj, self.down_proj))
        if self._use_grouped_mm(x_MD):
            try:
                offs = counts_E.cumsum(0).to(torch.int32)
                g = torch._grouped_mm(x_MD, gate_EID.to(x_MD.dtype).transpose(-2, -1), offs=offs)
                u = torch._grouped_mm(x_MD, up_EID.to(x_MD.dtype).transpose(-2, -1), offs=offs)
                return torch._grouped_mm(F.silu(g) * u, down_EDI.to(x_MD.dtype).transpose(-2, -1), offs=offs)
            except RuntimeError as err:  # untested hardware/dtype combination: fall back once, loudly
                RoutedExperts._grouped_mm_failed = True
                warnings.warn(f"torch._grouped_mm failed ({err}); using the per-expert loop", stacklevel=2)
        M, E = x_MD.shape[0], counts_E.shape[0]
        if M and use_skinny(x_MD, gate_EID, -(-M // E)):  # rows per expert on average (ceil)
            # a decode step: each expert's few rows straight from the sorted order, no padding
            g = ops.grouped_skinny_linear(x_MD, gate_EID, counts_E)
            u = ops.grouped_skinny_linear(x_MD, up_EID, counts_E)
            return ops.grouped_skinny_linear(F.silu(g) * u, down_EDI, counts_E)
        cap = int(counts_E.max()) if M else 0
        # padded bmm: few ops (decode steps, small batches) or little padding; else one matmul chain per expert
        padded = self.dispatch == "padded" or (
            self.dispatch == "auto" and (M <= 64 * E or E * cap <= 1.25 * M)
        )
        if expert_M is not None and M and padded:
            return _padded_bmm(x_MD, counts_E, expert_M, cap, gate_EID, up_EID, down_EDI)
        pieces = []
        start = 0
        # unbind once: its backward stacks the E slice-gradients instead of E full-size accumulations
        for n, wg, wu, wd in zip(counts_E.tolist(), gate_EID.unbind(0), up_EID.unbind(0), down_EDI.unbind(0)):
            if n == 0:
                continue
            xe = x_MD[start : start + n]
            pieces.append(F.linear(F.silu(F.linear(xe, wg)) * F.linear(xe, wu), wd))
            start += n
        if not pieces:
            return x_MD.new_zeros(0, down_EDI.shape[1])
        return torch.cat(pieces, dim=0)


def _local(w: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (expert parallelism); any other tensor as it is."""
    return w.to_local() if hasattr(w, "to_local") else w


def _padded_bmm(x_MD, counts_E, expert_M, cap, gate_EID, up_EID, down_EDI):
    """Scatter into (E, cap, D), three bmm, gather back."""
    E, D = counts_E.shape[0], x_MD.shape[1]
    start_E = counts_E.cumsum(0) - counts_E
    slot_M = expert_M * cap + torch.arange(x_MD.shape[0], device=x_MD.device) - start_E[expert_M]
    x_ECD = x_MD.new_zeros(E * cap, D).index_copy(0, slot_M, x_MD).view(E, cap, D)
    h = F.silu(torch.bmm(x_ECD, gate_EID.transpose(1, 2))) * torch.bmm(x_ECD, up_EID.transpose(1, 2))
    y_ECD = torch.bmm(h, down_EDI.transpose(1, 2))
    return y_ECD.reshape(E * cap, -1).index_select(0, slot_M)

class MoE(nn.Module):
    """Routed experts + shared experts. Records per-expert token counts of each training forward."""

    # True while activation checkpointing recomputes a forward in backward: its tokens were counted
    recomputing = False

    def __init__(self, config: MoonlightConfig) -> None:
        super().__init__()
        self.top_k, self.n_experts = config.num_experts_per_tok, config.n_routed_experts
        self.aux_loss_alpha, self.seq_aux = config.aux_loss_alpha, config.seq_aux
        self.gate = Router(config)
        self.experts = RoutedExperts(config)
        self.shared_experts = (
            MLP(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts)
            if config.n_shared_experts > 0
            else None
        )
        # None: every expert is here. Else a callable (experts, x_MD, counts_E, expert_M) -> y_MD that sends
        # the sorted assignments to the ranks holding their experts and brings the outputs back in the
        # same order (muonext.parallel's expert parallelism): the one distribution hook of the model.
        self.expert_parallel = None
        # tokens routed to each expert, summed over training forwards since the last bias update; a plain
        # float64 attribute (not a buffer) so that model.to(bf16) cannot round the counts
        self.load_accum = torch.zeros(config.n_routed_experts, dtype=torch.float64)
        self.last_load: torch.Tensor | None = None  # (E,) counts of the most recent forward

    def forward(self, x_BTD: torch.Tensor, mask_BT: torch.Tensor | None = None):
        """-> (y (B, T, D), aux loss (scalar) or None). mask_BT: 1 for real tokens (loads, aux loss)."""
        B, T, D = x_BTD.shape
        x_ND = x_BTD.reshape(B * T, D)
        r = self.gate(x_ND)
        flat_M = r.idx_NK.reshape(-1)
        order_M = flat_M.argsort(stable=True)
        counts_E = torch.bincount(flat_M, minlength=self.n_experts)
        x_sorted_MD, expert_M = x_ND.index_select(0, order_M // self.top_k), flat_M[order_M]
        if self.expert_parallel is None:
            y_sorted_MD = self.experts(x_sorted_MD, counts_E, expert_M)
        else:
            y_sorted_MD = self.expert_parallel(self.experts, x_sorted_MD, counts_E, expert_M)
        # back to (token, k) order: row order_M[m] of the result is sorted row m
        y_NKD = (
            y_sorted_MD.new_empty(y_sorted_MD.shape)
            .index_copy(0, order_M, y_sorted_MD)
            .view(B * T, self.top_k, D)
        )
        y_ND = torch.bmm(r.weight_NK.unsqueeze(1).to(y_NKD.dtype), y_NKD).squeeze(1)
        if self.shared_experts is not None:
            y_ND = y_ND + self.shared_experts(x_ND)
        self._record_load(flat_M, counts_E, mask_BT)
        aux = None
        if self.training and self.aux_loss_alpha > 0:
            aux = sequence_aux_loss(
                r.scores_NE.view(B, T, -1),
                r.idx_NK.view(B, T, -1),
                mask_BT,
                self.aux_loss_alpha,
                per_sequence=self.seq_aux,
            )
        return y_ND.view(B, T, D), aux

    def reset_load(self, device: torch.device | None = None) -> None:
        device = self.gate.weight.device if device is None else device
        self.load_accum = torch.zeros(self.n_experts, dtype=torch.float64, device=device)

    @torch.no_grad()
    def _record_load(
        self, flat_M: torch.Tensor, counts_E: torch.Tensor, mask_BT: torch.Tensor | None
    ) -> None:
        if mask_BT is not None:
            valid_M = mask_BT.reshape(-1).bool().repeat_interleave(self.top_k)
            counts_E = torch.bincount(flat_M[valid_M], minlength=self.n_experts)
        self.last_load = counts_E.detach()
        if self.training and not MoE.recomputing:
            if self.load_accum.device != counts_E.device:  # first use after a move (or a meta build)
                self.reset_load(counts_E.device)
            self.load_accum += counts_E.to(torch.float64)


@contextlib.contextmanager
def recomputing():
    """Marks a forward run again by activation checkpointing (its expert loads are not counted twice)."""
    MoE.recomputing = True
    try:
        yield
    finally:
        MoE.recomputing = False


def sequence_aux_loss(
    scores_BTE: torch.Tensor,
    idx_BTK: torch.Tensor,
    mask_BT: torch.Tensor | None,
    alpha: float,
    per_sequence: bool = True,
) -> torch.Tensor:
    """DeepSeek-V3 sequence-wise balance loss α·Σ_i f_i·P_i, averaged over sequences.

    f_i = E/(K·T)·#{t: i in top-k(t)}, P_i = (1/T)·Σ_t s_{t,i}/Σ_j s_{t,j} (T = real tokens of the sequence).
    `per_sequence=False` treats the whole batch as one sequence.
    """
    B, T, E = scores_BTE.shape
    K = idx_BTK.shape[-1]
    if not per_sequence:
        scores_BTE, idx_BTK = scores_BTE.reshape(1, B * T, E), idx_BTK.reshape(1, B * T, K)
        mask_BT = None if mask_BT is None else mask_BT.reshape(1, B * T)
        B, T = 1, B * T
    m_BT1 = (torch.ones(B, T, device=scores_BTE.device) if mask_BT is None else mask_BT.float()).unsqueeze(-1)
    n_B1 = m_BT1.sum(1).clamp_min(1.0)
    sel_BTE = torch.zeros_like(scores_BTE).scatter_(-1, idx_BTK, 1.0) * m_BT1
    f_BE = sel_BTE.sum(1) * (E / K) / n_B1
    p_BE = (scores_BTE / scores_BTE.sum(-1, keepdim=True) * m_BT1).sum(1) / n_B1
    return alpha * (f_BE * p_BE).sum(-1).mean()


@torch.no_grad()
def update_bias(bias_E: torch.Tensor, load_E: torch.Tensor, rate: float) -> torch.Tensor:
    """In place b ← b + u·(sign(e) − mean(sign(e))), e = mean(load) − load. Returns the change."""
    load = load_E.to(torch.float64)
    s = torch.sign(load.mean() - load)
    delta = (rate * (s - s.mean())).to(bias_E.dtype)
    bias_E += delta
    return delta
