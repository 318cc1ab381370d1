"""Where each attention head's query and key live in the weights, and how QK-clip rescales them.

For a head h with γ = τ / S_max^h < 1, the rescaling multiplies that head's logits q·k by exactly γ
(rotary embeddings are linear, so they commute with a scale of q or k):

* `MLAHeads` (Moonlight / DeepSeek-V3 MLA, ours or transformers'): the head's q_nope rows (of `q_proj`
  or `q_b_proj`) and its k_nope rows of `kv_b_proj` by √γ, its q_rope rows by γ. The rotary key comes
  from `kv_a_proj_with_mqa` and is shared by all heads: never touched. Value rows are not touched.
* `PlainHeads` (q_proj / k_proj): multi-head attention scales the head's rows of W_q and W_k by √γ. When
  a key head is shared by several query heads (grouped-query or multi-query attention), scaling it would
  change the other heads too; the query rows take the whole γ instead, as MLA's q_rope does.

Biases of scaled rows are scaled with them. Weights may be FSDP2 DTensors: each rank scales the rows
it holds. The optimizer state is not touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .dtensor_params import is_dtensor


def scale_rows_(linear: nn.Module, row_scale: Tensor) -> None:
    """weight[i, :] *= row_scale[i] (and bias[i]) in place, on the rows this rank holds."""
    for p in (linear.weight, getattr(linear, "bias", None)):
        if p is None:
            continue
        if is_dtensor(p):
            from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

            shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
            data, scale = p.to_local(), row_scale[offset[0] : offset[0] + shape[0]]
        else:
            data, scale = p.data, row_scale
        data.mul_(scale.to(device=data.device, dtype=data.dtype).view(-1, *([1] * (data.dim() - 1))))


def _per_head_rows(per_head: Tensor, pieces: list[tuple[int, str]]) -> Tensor:
    """per_head (H, 3) = [1, √γ, γ] columns -> one scale per row: each head's rows as `pieces` (length,
    which of 'one' | 'sqrt' | 'gamma'), concatenated head after head."""
    col = {"one": 0, "sqrt": 1, "gamma": 2}
    parts = [per_head[:, col[kind]].unsqueeze(1).expand(-1, n) for n, kind in pieces]
    return torch.cat(parts, dim=1).reshape(-1)


def _factors(gamma: Tensor) -> Tensor:
    g = gamma.double()
    return torch.stack((torch.ones_like(g), g.sqrt(), g), dim=1)


@dataclass(frozen=True)
class MLAHeads:
    num_heads: int
    qk_nope: int
    qk_rope: int
    v_head: int

    @classmethod
    def of(cls, module: nn.Module) -> MLAHeads:
        return cls(module.num_heads, module.qk_nope_head_dim, module.qk_rope_head_dim, module.v_head_dim)

    def rescale(self, module: nn.Module, gamma: Tensor) -> None:
        f = _factors(gamma)
        q = module.q_proj if getattr(module, "q_proj", None) is not None else module.q_b_proj
        scale_rows_(q, _per_head_rows(f, [(self.qk_nope, "sqrt"), (self.qk_rope, "gamma")]))
        scale_rows_(module.kv_b_proj, _per_head_rows(f, [(self.qk_nope, "sqrt"), (self.v_head, "one")]))


@dataclass(frozen=True)
class PlainHeads:
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, module: nn.Module, name: str) -> PlainHeads:
        for norm in ("q_norm", "k_norm"):
            if getattr(module, norm, None) is not None:
                raise ValueError(
                    f"QKClip: {name} normalises its {norm[0]} heads after the projection "
                    f"({norm}), so scaling W_{norm[0]} cannot change its logits"
                )
        d = module.head_dim
        heads, kv_heads = module.q_proj.weight.shape[0] // d, module.k_proj.weight.shape[0] // d
        if (
            heads * d != module.q_proj.weight.shape[0]
            or kv_heads * d != module.k_proj.weight.shape[0]
            or heads % kv_heads
        ):
            raise ValueError(
                f"QKClip: {name}: q_proj/k_proj rows ({module.q_proj.weight.shape[0]}, "
                f"{module.k_proj.weight.shape[0]}) are not whole heads of head_dim {d}"
            )
        return cls(heads, kv_heads, d)

    def rescale(self, module: nn.Module, gamma: Tensor) -> None:
        f = _factors(gamma)
        if self.num_kv_heads == self.num_heads:
            scale_rows_(module.q_proj, _per_head_rows(f, [(self.head_dim, "sqrt")]))
            scale_rows_(module.k_proj, _per_head_rows(f, [(self.head_dim, "sqrt")]))
        else:  # shared keys stay; the query takes all of γ
            scale_rows_(module.q_proj, _per_head_rows(f, [(self.head_dim, "gamma")]))
