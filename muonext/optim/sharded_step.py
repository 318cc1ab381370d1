"""What `Muon` does differently once some of its parameters are DTensors (DESIGN.md §8).

* State is created at construction for every parameter, as DTensors placed like the parameters
  (`torch.zeros_like`), so every rank has the same state keys and `torch.distributed.checkpoint`
  saves and reshards it (an expert that got no tokens would otherwise leave a key missing on one rank).
* One all_reduce per step agrees on which parameters have a gradient somewhere and whether any is
  NaN/Inf, so every rank takes the same branch (a skipped step or an error on all ranks, never a
  hang). A rank without a gradient for a parameter that has one elsewhere steps it with zeros.
* Momentum, Newton–Schulz of whole matrices, AdamW and the update run on local shards; matrices split
  across ranks go through an `OwnerExchange` per process group, while whole ones run NS.
* `update_rms` of a DTensor is of the whole update: local sums of squares (each element counted once
  over replicas) meet in one async all_reduce, read when `update_rms` is.
* Collectives go through `dist_comm.Collectives`: bytes are counted per step (`Muon.comm_bytes`), and a
  rank that raises mid-step leaves a record that the others' failing collectives quote
  (`DistributedMuonError`) instead of hanging until the process-group timeout.

Every rank of the default process group must hold the same parameter list and step together.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.distributed as dist
from torch import Tensor

from .adamw import init_adamw_state
from .dist_comm import Collectives
from .dtensor_params import SplitParam, local, replication, split_param
from .ns_batches import batch_flops, newton_schulz_batches, ns_key
from .owner_exchange import OwnerExchange

__all__ = ["ShardedStep"]


class ShardedStep:
    def __init__(self, opt) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("Muon: DTensor parameters need torch.distributed to be initialised")
        self.opt = opt
        self.splits: dict[int, SplitParam] = {}  # id(param) -> how its matrices are split
        self.exchanges: dict[tuple, OwnerExchange] = {}
        self.world = Collectives(None, "Muon")
        self.comms: dict[tuple, Collectives] = {}  # one per process group that splits matrices
        self._pending_rms = None
        self.device = None
        for gi in range(len(opt.param_groups)):
            self.add_group(gi)

    def add_group(self, gi: int) -> None:
        opt, group = self.opt, self.opt.param_groups[gi]
        for pi, p in enumerate(group["params"]):
            name = opt._param_name(gi, pi)
            self.device = self.device or p.device
            state = opt.state[p]
            if opt._uses_muon(group, name, p):
                state.setdefault(
                    "momentum_buffer", torch.zeros_like(p, memory_format=torch.contiguous_format)
                )
                split = split_param(name, p)
                if split is not None:
                    self.splits[id(p)] = split
            else:
                init_adamw_state(state, p)

    # -- the step's frame ---------------------------------------------------------------------

    def new_step(self) -> None:
        for comm in (self.world, *self.comms.values()):
            comm.new_step()

    def record_failure(self, exc: BaseException) -> None:
        """This rank raised mid-step: leave a record that the other ranks' failed collectives quote."""
        self.world.record_failure(exc)

    def comm_bytes(self) -> dict[str, dict[str, int]]:
        """Bytes this rank sent and received in the last step, by collective kind."""
        total: dict[str, dict[str, int]] = {}
        for comm in (self.world, *self.comms.values()):
            for kind, counts in comm.bytes.items():
                entry = total.setdefault(kind, {"sent": 0, "received": 0})
                for k in entry:
                    entry[k] += counts[k]
        return total

    # -- agreement ---------------------------------------------------------------------------

    def agree(self, items: list) -> list[tuple] | None:
        """(group, param, local grad, name) of every parameter with a gradient on some rank, in
        param-group order; None when the step is skipped (a NaN/Inf gradient with skip_nonfinite)."""
        opt = self.opt
        params = [
            (g, p, opt._param_name(gi, pi))
            for gi, g in enumerate(opt.param_groups)
            for pi, p in enumerate(g["params"])
        ]
        index = {id(p): i for i, (_, p, _) in enumerate(params)}
        n = len(params)
        flags = torch.zeros(2 * n, dtype=torch.float32)
        idx = [index[id(it.param)] for it in items]
        flags[idx] = 1.0
        held = [(i, it.grad) for i, it in zip(idx, items) if it.grad.numel()]  # a shard may be empty
        if opt.check_finite and held:
            maxima = torch._foreach_norm([g for _, g in held], float("inf"))
            flags[[n + i for i, _ in held]] = (~torch.stack(maxima).isfinite()).float().cpu()
        flags = flags.to(self.device)  # NCCL reduces device tensors only
        self.world.all_reduce(flags, "the gradient check", op=dist.ReduceOp.MAX).wait()
        flags = flags.cpu()
        bad = [params[i][2] for i in range(n) if flags[n + i] > 0]
        if bad and not opt.nonfinite(bad):
            return None
        mine = {index[id(it.param)]: it.grad for it in items}
        return [
            (g, p, mine[i] if i in mine else torch.zeros_like(local(p)), name)
            for i, (g, p, name) in enumerate(params)
            if flags[i] > 0
        ]

    # -- Newton–Schulz of split matrices ------------------------------------------------------

    def split_items(self, items: list) -> dict[int, SplitParam]:
        return {i: self.splits[id(it.param)] for i, it in enumerate(items) if id(it.param) in self.splits}

    def start_exchanges(self, items: list, ns_inputs: list[Tensor], split: dict[int, SplitParam]) -> list:
        """Sends the momentum pieces of split matrices to their owners (one all_to_all per group)."""
        by_group: dict[tuple, list[int]] = defaultdict(list)
        for i in sorted(split):
            by_group[(split[i].group_key, items[i].group["ns_dtype"])].append(i)
        started = []
        for (group_key, dtype), idx in by_group.items():
            key = (group_key, tuple(id(items[i].param) for i in idx))
            if key not in self.exchanges:  # the same on every rank of the group: the active set is agreed
                if group_key not in self.comms:
                    self.comms[group_key] = comm = Collectives(split[idx[0]].group, "Muon")
                    comm.step = self.world.step  # steps are numbered alike in every failure message
                self.exchanges[key] = OwnerExchange([split[i] for i in idx], self.comms[group_key])
            ex = self.exchanges[key]
            started.append((ex, idx, dtype, ex.gather([ns_inputs[i] for i in idx], dtype)))
        return started

    def finish_exchanges(self, items: list, started: list) -> dict[int, Tensor]:
        """NS on the matrices this rank owns, then their pieces back: {item index: local update}."""
        scattering = []
        for ex, idx, dtype, handle in started:
            matrices = ex.matrices(handle)
            keyed: dict[tuple, list[int]] = defaultdict(list)
            for m, u in enumerate(ex.mine):
                keyed[ns_key(items[idx[ex.units[u][0]]].group, tuple(matrices[m].shape))].append(m)
            batches = [(key, torch.stack([matrices[m] for m in ms])) for key, ms in keyed.items()]
            self.opt.ns_flops_last_step += batch_flops(batches)
            results: list[Tensor | None] = [None] * len(matrices)
            for ms, out in zip(keyed.values(), newton_schulz_batches(batches)):
                for m, o in zip(ms, out):
                    results[m] = o
            scattering.append((ex, idx, dtype, ex.scatter(results, dtype)))
        updates = {}
        for ex, idx, dtype, handle in scattering:
            updates.update(zip(idx, ex.updates(handle, dtype)))
        return updates

    # -- update RMS ---------------------------------------------------------------------------

    def reduce_rms(self, items: list, values: list[Tensor]) -> None:
        """Starts summing each parameter's squared update over its shards (replicas counted once)."""
        if not items:
            self._pending_rms = None
            return
        sq = torch.stack(
            [v.double() ** 2 * it.grad.numel() / replication(it.param) for it, v in zip(items, values)]
        )
        handle = self.world.all_reduce(sq, "the update-RMS all-reduce")
        self._pending_rms = (handle, sq, [it.name for it in items], [it.param.numel() for it in items])

    def finish_rms(self, names: list[str], values: Tensor | None) -> tuple[list[str], Tensor | None]:
        if self._pending_rms is None:
            return names, values
        handle, sq, names, numels = self._pending_rms
        self._pending_rms = None
        handle.wait()
        return names, (sq.cpu() / torch.tensor(numels, dtype=torch.float64).clamp_min(1)).sqrt().float()
