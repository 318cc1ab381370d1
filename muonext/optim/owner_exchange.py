"""Newton–Schulz for matrices split across the ranks of one process group (FSDP2's row shards).

Every matrix (a `unit`: a 2-D parameter, one expert of a 3-D stack, a ≥4-D tensor viewed as
(shape[0], rest)) gets one owner rank of the group, fixed when the exchange is built (largest NS cost
first, to the least-loaded rank, preferring the rank that holds the biggest piece). One step:

    gather   one all_to_all: every rank sends its piece of each unit to the unit's owner
    NS       the owner runs Newton–Schulz on whole matrices (batched by the caller, by shape)
    scatter  one all_to_all: the owner sends each rank the piece of the update it holds

Both all_to_alls carry the NS dtype (bf16 by default, as the paper's gather). A rank's own pieces
travel as self-sends, which keeps one code path; only what crosses to other ranks is counted. Every rank
of the group must build the exchange from the same list of parameters, in the same order. A peer that
fails mid-exchange surfaces as a `DistributedMuonError` naming it (`dist_comm.Collectives`).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from .dist_comm import Collectives
from .dtensor_params import SplitParam
from .shapes import balanced_owners, matrix_shape, ns_flops

__all__ = ["OwnerExchange"]


class OwnerExchange:
    """The split matrices of one process group, each given to one owner rank."""

    def __init__(self, params: list[SplitParam], comm: Collectives, slack: float = 1.1):
        first = params[0]
        self.params, self.comm = params, comm
        self.rank, self.size = first.group_rank, first.group_size
        self.units: list[tuple[int, int]] = []  # (position in params, matrix index)
        costs, held = [], []
        for k, sp in enumerate(params):
            batch, rows, cols = matrix_shape(sp.full_shape)
            for j in range(batch):
                self.units.append((k, j))
                costs.append(ns_flops(rows, cols))
                held.append(dict(enumerate(sp.sizes)))
        self.owner = balanced_owners(costs, held, self.size, slack)
        self.ns_flops = [0] * self.size  # per group rank, one NS step
        for u, owner in enumerate(self.owner):
            self.ns_flops[owner] += costs[u]
        self.owned_by: dict[int, list[int]] = defaultdict(list)  # rank -> its units, in unit order
        for u, owner in enumerate(self.owner):
            self.owned_by[owner].append(u)
        self.mine = self.owned_by[self.rank]

    # -- shapes ------------------------------------------------------------------------------------

    def _piece_shape(self, u: int, group_rank: int) -> tuple[int, ...]:
        k, _ = self.units[u]
        shape = self.params[k].shape_on(group_rank)
        return shape[1:] if len(shape) == 3 else shape

    def _piece_dim(self, u: int) -> int:
        sp = self.params[self.units[u][0]]
        return sp.dim - 1 if len(sp.local_shape) == 3 else sp.dim

    def _numel(self, u: int, group_rank: int) -> int:
        n = 1
        for s in self._piece_shape(u, group_rank):
            n *= s
        return n

    def unit_shape(self, u: int) -> tuple[int, int]:
        """(rows, cols) of unit u as Newton–Schulz sees it."""
        _, rows, cols = matrix_shape(self.params[self.units[u][0]].full_shape)
        return rows, cols

    @staticmethod
    def _piece(t: Tensor, j: int) -> Tensor:
        return t[j] if t.dim() == 3 else t

    # -- the two all_to_alls ------------------------------------------------------------------------

    def _all_to_all(
        self, send: list[Tensor], send_splits: list[int], recv_splits: list[int], dtype, kind: str
    ):
        flat = torch.cat([t.reshape(-1) for t in send]).to(dtype) if send else torch.empty(0, dtype=dtype)
        recv = torch.empty(sum(recv_splits), dtype=dtype, device=flat.device)
        what = f"the Newton–Schulz {kind.split(':')[1]} of {len(self.units)} split matrices"
        return recv, self.comm.all_to_all(recv, flat, recv_splits, send_splits, kind, what)

    def gather(self, pieces: list[Tensor], dtype: torch.dtype):
        """Starts sending this rank's momentum pieces (`pieces[k]`: local shape of params[k]) to their
        owners; returns a handle for `matrices`."""
        send, send_splits = [], []
        for q in range(self.size):
            units = self.owned_by[q]
            send += [self._piece(pieces[self.units[u][0]], self.units[u][1]) for u in units]
            send_splits.append(sum(self._numel(u, self.rank) for u in units))
        recv_splits = [sum(self._numel(u, s) for u in self.mine) for s in range(self.size)]
        return self._all_to_all(send, send_splits, recv_splits, dtype, "all_to_all:gather")

    def matrices(self, handle) -> list[Tensor]:
        """Waits for `gather`; the whole (rows, cols) matrix of each unit this rank owns (`self.mine`)."""
        recv, work = handle
        work.wait()
        sizes = [self._numel(u, s) for s in range(self.size) for u in self.mine]
        chunks = recv.split(sizes)
        out = []
        for i, u in enumerate(self.mine):
            parts = [chunks[s * len(self.mine) + i].view(self._piece_shape(u, s)) for s in range(self.size)]
            out.append(torch.cat(parts, dim=self._piece_dim(u)).view(self.unit_shape(u)))
        return out

    def scatter(self, results: list[Tensor], dtype: torch.dtype):
        """Starts sending each rank its piece of the updates of the units this rank owns (`results[i]` for
        `self.mine[i]`); returns a handle for `updates`."""
        send = []
        for s in range(self.size):
            for i, u in enumerate(self.mine):
                sp = self.params[self.units[u][0]]
                whole = results[i].view(sp.full_shape[1:] if len(sp.full_shape) == 3 else sp.full_shape)
                send.append(whole.narrow(self._piece_dim(u), sum(sp.sizes[:s]), sp.sizes[s]))
        send_splits = [sum(self._numel(u, s) for u in self.mine) for s in range(self.size)]
        recv_splits = [sum(self._numel(u, self.rank) for u in self.owned_by[q]) for q in range(self.size)]
        return self._all_to_all(send, send_splits, recv_splits, dtype, "all_to_all:scatter")

    def updates(self, handle, dtype: torch.dtype) -> list[Tensor]:
        """Waits for `scatter`; this rank's piece of the update of each parameter (its local shape)."""
        recv, work = handle
        work.wait()
        out = [torch.empty(sp.local_shape, dtype=dtype, device=recv.device) for sp in self.params]
        offset = 0
        for q in range(self.size):
            for u in self.owned_by[q]:
                k, j = self.units[u]
                n = self._numel(u, self.rank)
                self._piece(out[k], j).copy_(recv[offset : offset + n].view(self._piece_shape(u, self.rank)))
                offset += n
        return out
