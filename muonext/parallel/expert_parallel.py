"""Expert parallelism: the routed experts of a MoE layer split over the ranks of the `ep` mesh dim.

Legend: E experts, P = ep ranks, L = E/P experts per rank, M assignments this rank routed, R
assignments this rank's experts receive, D hidden size.

Rank p holds experts [p·L, (p+1)·L) as the local shard of a `Shard(0)` DTensor of each (E, out, in)
stack. Per MoE forward (`ExpertParallel.__call__`, the model's `MoE.expert_parallel` hook):

    counts    all_to_all of the (E,) tokens-per-expert: rank p learns how many rows each rank sends
              to each of its L experts, (P, L)
    dispatch  all_to_all of the M sorted rows (uneven splits), arriving grouped by source rank
    permute   regroup the R rows by local expert, run the L experts (the module's own forward, so
              FSDP's hooks gather its parameters), permute back
    combine   all_to_all of the outputs back to the ranks whose tokens they are, in their sorted order

The token all_to_alls are torch's autograd functional collectives: backward runs the reverse
exchange. Every rank of the `ep` group must run every MoE forward (empty batches included).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed._functional_collectives import all_to_all_single_autograd
from torch.distributed.device_mesh import DeviceMesh

__all__ = ["ExpertParallel"]


class ExpertParallel:
    def __init__(self, ep_mesh: DeviceMesh, n_experts: int):
        self.group = ep_mesh.get_group()
        self.size = ep_mesh.size()
        if n_experts % self.size:
            raise ValueError(
                f"expert parallelism: {n_experts} routed experts cannot be split evenly over "
                f"ep = {self.size} ranks"
            )
        self.local_experts = n_experts // self.size

    def __call__(self, experts: nn.Module, x_MD: Tensor, counts_E: Tensor, expert_M: Tensor) -> Tensor:
        P, L = self.size, self.local_experts
        counts_E = counts_E.to(torch.int64)
        recv_PL = torch.empty_like(counts_E)
        dist.all_to_all_single(recv_PL, counts_E, group=self.group)  # equal splits: L counts per rank
        recv_PL = recv_PL.view(P, L)
        send_P = counts_E.view(P, L).sum(1).tolist()
        from_P = recv_PL.sum(1).tolist()
        x_RD = _wait(all_to_all_single_autograd(x_MD, from_P, send_P, self.group))

        # rows arrive grouped by (source, local expert); the experts want them grouped by local expert
        order_R = _source_major_to_expert_major(recv_PL)
        counts_L = recv_PL.sum(0)
        expert_R = torch.repeat_interleave(torch.arange(L, device=counts_L.device), counts_L)
        y_RD = experts(x_RD.index_select(0, order_R), counts_L, expert_R)
        y_RD = y_RD.new_empty(y_RD.shape).index_copy(0, order_R, y_RD)
        return _wait(all_to_all_single_autograd(y_RD, send_P, from_P, self.group))


def _source_major_to_expert_major(counts_PL: Tensor) -> Tensor:
    """Indices that regroup rows laid out by (source, expert) blocks into (expert, source) order."""
    flat = counts_PL.reshape(-1)
    starts_PL = (flat.cumsum(0) - flat).view_as(counts_PL)
    block_starts, block_counts = starts_PL.t().reshape(-1), counts_PL.t().reshape(-1)
    total = int(flat.sum())
    within = torch.arange(total, device=flat.device) - torch.repeat_interleave(
        block_counts.cumsum(0) - block_counts, block_counts
    )
    return torch.repeat_interleave(block_starts, block_counts) + within


def _wait(t: Tensor) -> Tensor:
    """Functional collectives return an async tensor; wait before index arithmetic on it."""
    return t.wait() if hasattr(t, "wait") else t
