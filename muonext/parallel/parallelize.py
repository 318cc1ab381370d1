"""Shard a Moonlight model over a device mesh: FSDP2 per decoder layer, expert parallelism, optional
activation checkpointing (DESIGN.md §8).

    routed experts   ep > 1: each (E, out, in) stack becomes a `Shard(0)` DTensor over `ep` (rank p
                     holds experts [p·E/ep, (p+1)·E/ep)), tokens travel by all_to_all
                     (`ExpertParallel`); the local experts are then FSDP-sharded over `dp_shard_mod_ep`
    decoder layers   one `fully_shard` unit each over `dp_shard` (HSDP with `dp_replicate` when > 1)
    embeddings       one unit; the final norm and the head another; the root takes what is left
    gradients        FSDP2 reduce-scatters (and all-reduces over replicas) as plain sums: the trainer
                     scales each rank's loss so that the sum over ranks is the global token mean,
                     which is right for the experts too, whose gradients meet over fewer ranks

Muon (`muonext.optim.Muon`) steps the resulting DTensor parameters directly.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.utils.checkpoint import checkpoint

from ..models import MoonlightForCausalLM
from ..models.moe import recomputing
from .expert_parallel import ExpertParallel
from .mesh import ParallelMesh

__all__ = ["full_state_dict", "materialize", "parallelize_moonlight"]

EXPERT_STACKS = ("gate_proj", "up_proj", "down_proj")


def parallelize_moonlight(
    model: MoonlightForCausalLM,
    mesh: ParallelMesh,
    *,
    activation_checkpointing: bool = False,
    reshard_after_forward: bool = True,
    param_dtype: torch.dtype | None = None,
) -> MoonlightForCausalLM:
    """Shards `model` in place over `mesh` (from `build_mesh`) and returns it.

    Every rank must hold the same full model beforehand (same seed or the same checkpoint), or a model
    on the meta device to be materialised after (`materialize`). Parameter names are unchanged.
    `param_dtype=torch.bfloat16`: FSDP2 gathers bf16 copies to compute with and reduces gradients in
    fp32 into the fp32 shards (mixed precision without autocast, whose cast cache would keep a bf16
    copy of every gathered weight until backward).
    """
    fsdp = {
        "reshard_after_forward": reshard_after_forward,
        "mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32),
    }
    if model.config.tie_word_embeddings:
        raise ValueError(
            "parallelize_moonlight: tied embeddings are not supported (one parameter in two "
            "FSDP units); train with tie_word_embeddings=False"
        )
    ep_mesh = mesh.ep
    if ep_mesh.size() > 1:
        for moe in model.moe_layers():
            moe.expert_parallel = ExpertParallel(ep_mesh, moe.n_experts)
            for name in EXPERT_STACKS:
                full = getattr(moe.experts, name)
                local = distribute_tensor(full.detach(), ep_mesh, [Shard(0)], src_data_rank=None)
                setattr(moe.experts, name, nn.Parameter(local, requires_grad=full.requires_grad))
    dp_mesh, expert_mesh = mesh.dense_fsdp, mesh.expert_fsdp
    for layer in model.model.layers:
        if activation_checkpointing:
            # inside the FSDP unit: recomputation runs while backward holds the layer's parameters
            layer.forward = functools.partial(
                checkpoint, layer.forward, use_reentrant=False, context_fn=_recompute_contexts
            )
        if layer.is_moe and ep_mesh.size() > 1:
            fully_shard(layer.mlp.experts, mesh=expert_mesh, **fsdp)
        fully_shard(layer, mesh=dp_mesh, **fsdp)
    fully_shard(model.model.embed_tokens, mesh=dp_mesh, **fsdp)
    fully_shard([model.model.norm, model.lm_head], mesh=dp_mesh, **fsdp)
    fully_shard(model, mesh=dp_mesh, **fsdp)
    for module in model.modules():
        if isinstance(module, FSDPModule):  # sums (see the module docstring); gloo has no premultiplied sum
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


def _recompute_contexts():
    return contextlib.nullcontext(), recomputing()


@torch.no_grad()
def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer whole, on the CPU, on rank 0 (others get {}). A collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


@torch.no_grad()
def materialize(model: MoonlightForCausalLM, device: torch.device | str) -> MoonlightForCausalLM:
    """Allocates a model built on the meta device and sharded by `parallelize_moonlight`, and fills it
    exactly as `MoonlightForCausalLM` initialises a whole model with the same seed: each parameter is
    drawn whole, in `named_parameters` order, and each rank keeps its part (peak memory: the shards
    plus one whole parameter)."""
    model.to_empty(device=device)
    for name, p in model.named_parameters():
        whole = torch.empty(p.shape, dtype=p.dtype, device=device)
        model.init_parameter_(name, whole)
        if isinstance(p, DTensor):
            p.to_local().copy_(
                distribute_tensor(whole, p.device_mesh, p.placements, src_data_rank=None).to_local()
            )
        else:
            p.copy_(whole)
    model.reset_buffers()
    return model
