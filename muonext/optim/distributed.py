"""Distributed Muon: ZeRO-1 Muon over a torch.distributed process group (Moonlight, Algorithm 1; DESIGN.md §3).

Parameters stay replicated; optimizer state is partitioned. All parameters form a flat, bucketed layout
(`shard_layout.py`) and each rank owns a contiguous 1/N slice of every bucket, keeping momentum (Muon) or
AdamW moments only for the pieces of parameters in its slice. One step:

    reduce-scatter gradients (mean)         skipped with grads="reduced" (DDP already averaged them)
    momentum on the local pieces            M ← μ·M + G;  U ← G + μ·M (Nesterov), cast to ns_dtype
    DP gather of U                          all_to_all: to every holder of a matrix ("gather") or to its
                                            one owner ("owner")
    Newton–Schulz                           batched over equal shapes, as in `Muon`
    keep / scatter back the local part      "owner": a second all_to_all returns the update pieces
    apply on the local pieces               W ← W·(1 − η·λ) − η·s(A, B)·O;  AdamW for the other pieces
    all-gather parameters

Collectives are issued per bucket with async_op=True: every bucket's gather is in flight while earlier
buckets run Newton–Schulz, and parameter all-gathers overlap the remaining work. The result equals
single-process `Muon` up to the rounding of the gradient mean (and bf16 NS noise).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import Tensor

from .. import ops
from .adamw import adamw_step, init_adamw_state
from .coefficients import ns_schedule
from .dist_comm import Collectives, DistributedMuonError, check_same_everywhere
from .distributed_state import KEY, is_shard, local_state_from_muon, shard_state_dict, to_muon_state_dict
from .dtensor_params import is_dtensor
from .hparams import update_scale
from .muon import Muon, NonFiniteGradientError, matrix_shape
from .ns_exchange import BucketPlan, batch_views, build_plans, resolver
from .shard_layout import ParamInfo, ShardLayout, assign_owners

__all__ = ["DistributedMuon", "DistributedMuonError"]

MODES = ("gather", "owner")
GRADS = ("local", "reduced")


class DistributedMuon(Muon):
    """ZeRO-1 Muon: same hyper-parameters and param groups as `Muon`, plus

    process_group  the data-parallel group (default: the world); gloo on CPU, NCCL on GPU
    mode           "gather" (the paper: every holder of a matrix runs its NS) or "owner" (one rank per
                   matrix, balanced by NS FLOPs, scatters the update back; no repeated NS)
    grads          "local": p.grad is this rank's gradient, averaged here by reduce-scatter;
                   "reduced": p.grad is already the mean on every rank (a DDP-wrapped model)
    bucket_mb      bucket size in MiB of parameter data (one collective of each kind per bucket)

    The parameter list is frozen at construction and must be the same on every rank (checked). Every
    rank must call `step()` together. `ns_dtype` is one value for all Muon groups (it is the wire dtype of
    the gather). After a step, `comm_bytes` holds the bytes this rank sent/received per collective kind
    and `state_bytes()` the optimizer state it keeps. Checkpoints: see `distributed_state.py`.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict] | Iterable[tuple[str, Tensor]],
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_coefficients: str | list = "keller",
        adjust_lr: str = "match_rms_adamw",
        rms_target: float = 0.2,
        ns_dtype: torch.dtype = torch.bfloat16,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        *,
        ns_eps: float = 1e-7,
        use_muon: bool | None = None,
        skip_nonfinite: bool = False,
        check_finite: bool = True,
        track_update_rms: bool = True,
        process_group=None,
        mode: str = "gather",
        grads: str = "local",
        bucket_mb: float = 32.0,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if grads not in GRADS:
            raise ValueError(f"grads must be one of {GRADS}, got {grads!r}")
        if isinstance(bucket_mb, bool) or not isinstance(bucket_mb, (int, float)) or not bucket_mb > 0:
            raise ValueError(f"bucket_mb must be a positive number, got {bucket_mb!r}")
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("DistributedMuon needs torch.distributed to be initialised "
                               "(torch.distributed.init_process_group, e.g. under torchrun)")
        self._frozen = False
        super().__init__(
            params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
            ns_coefficients=ns_coefficients, adjust_lr=adjust_lr, rms_target=rms_target, ns_dtype=ns_dtype,
            adamw_betas=adamw_betas, adamw_eps=adamw_eps, ns_eps=ns_eps, use_muon=use_muon,
            skip_nonfinite=skip_nonfinite, check_finite=check_finite, track_update_rms=track_update_rms,
        )
        self._frozen = True
        self.mode, self.grads = mode, grads
        self._comm = Collectives(process_group)
        self.rank, self.world_size = self._comm.rank, self._comm.world_size

        infos, self._params = [], []
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                name = self._param_name(gi, pi)
                if not p.is_contiguous():
                    raise ValueError(f"DistributedMuon: parameter {name} must be contiguous")
                infos.append(ParamInfo(len(infos), name, gi, tuple(p.shape), p.dtype, self._uses_muon(group, name, p)))
                self._params.append(p)
        self._ns_dtype = self._muon_ns_dtype()
        self._device = self._params[0].device if self._params else torch.device("cpu")
        self.layout = ShardLayout(infos, self.world_size, max(1, int(bucket_mb * 2**20)))
        check_same_everywhere(self.layout.signature() + [("mode", mode), ("grads", grads),
                                                         ("bucket_bytes", self.layout.bucket_bytes)],
                              process_group, self._device)
        self.owners = assign_owners(self.layout) if mode == "owner" else None
        self._plans: list[BucketPlan | None] = build_plans(self.layout, self.rank, mode, self.owners)
        self._pieces = defaultdict(list)
        for pc in self.layout.pieces(self.rank):
            self._pieces[pc.bucket].append(pc)
        self._pending_rms = None
        self.comm_bytes: dict[str, dict[str, int]] = {}

    def add_param_group(self, param_group: dict) -> None:
        if getattr(self, "_frozen", False):
            raise RuntimeError("DistributedMuon: the parameter layout is fixed at construction; "
                               "build a new optimizer to add parameters")
        super().add_param_group(param_group)
        if any(is_dtensor(p) for p in self.param_groups[-1]["params"]):
            raise TypeError("DistributedMuon shards the optimizer state of replicated parameters (ZeRO-1); "
                            "for DTensor parameters (fully_shard, expert parallelism) use Muon, which steps "
                            "them where they lie")

    def _muon_ns_dtype(self) -> torch.dtype:
        dtypes = set()
        for gi, g in enumerate(self.param_groups):
            if any(self._uses_muon(g, self._param_name(gi, pi), p) for pi, p in enumerate(g["params"])):
                dtypes.add(g["ns_dtype"])
        if len(dtypes) > 1:
            raise ValueError(f"DistributedMuon: all Muon param groups must share one ns_dtype (the dtype the "
                             f"gather sends), got {sorted(map(str, dtypes))}")
        return dtypes.pop() if dtypes else torch.float32

    # -- the step ---------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._finish_rms()
        self._comm.new_step()
        try:
            active = self._agree_on_gradients()
            if active is not None:
                self._sharded_step(active)
        except (DistributedMuonError, NonFiniteGradientError):
            raise  # every rank raises these together; nobody else to blame
        except BaseException as exc:
            self._comm.record_failure(exc)
            raise
        finally:
            self.comm_bytes = {k: dict(v) for k, v in self._comm.bytes.items()}
        return loss

    def _agree_on_gradients(self) -> list[bool] | None:
        """One all_reduce of [has grad | non-finite | rank failed] so every rank takes the same branch.
        Returns the parameters to update (a grad on some rank), or None for a skipped step."""
        n_params, index = len(self._params), {id(p): i for i, p in enumerate(self._params)}
        flags = torch.zeros(2 * n_params + self.world_size, dtype=torch.float32)
        local_error = None
        try:
            items = self._collect()
        except (TypeError, ValueError) as exc:
            local_error, items = exc, []
        idx = [index[id(it.param)] for it in items]
        flags[idx] = 1.0
        if self.check_finite and items:
            maxima = torch._foreach_norm([it.grad for it in items], float("inf"))
            flags[[n_params + i for i in idx]] = (~torch.stack(maxima).isfinite()).float().cpu()
        if local_error is not None:
            flags[2 * n_params + self.rank] = 1.0
        flags = flags.to(self._device)  # NCCL reduces device tensors only
        self._comm.all_reduce(flags, "the gradient check").wait()
        flags = flags.cpu()
        failed = flags[2 * n_params:].nonzero().flatten().tolist()
        if failed:
            if local_error is not None:
                raise local_error
            raise DistributedMuonError(f"DistributedMuon: rank(s) {failed} found invalid gradients (see their "
                                       f"errors); rank {self.rank} skips the step with them")
        bad = [self.layout.params[i].name for i in range(n_params) if flags[n_params + i] > 0]
        if bad:
            if not self.skip_nonfinite:
                raise NonFiniteGradientError(
                    f"DistributedMuon: non-finite (NaN/Inf) gradient in {', '.join(bad[:5])}"
                    + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
                    + " on at least one rank; pass skip_nonfinite=True to skip such steps instead")
            self.skipped_steps += 1
            return None
        return (flags[:n_params] > 0).tolist()

    def _zeros(self, numel: int, dtype: torch.dtype) -> Tensor:
        return torch.zeros(numel, dtype=dtype, device=self._device)

    def _grad_shards(self, active: list[bool]) -> tuple[list[Tensor], list]:
        """This rank's slice of every bucket's mean gradient (handles to wait on for grads="local")."""
        shards, handles = [], []
        for b, bucket in enumerate(self.layout.buckets):
            if self.grads == "reduced":
                pcs = self._pieces[b]
                grads = [self._params[pc.param].grad for pc in pcs]
                tensors = [g if g is not None else self._zeros(pc.length, bucket.dtype) for g, pc in zip(grads, pcs)]
                offsets = [pc.param_offset if g is not None else 0 for g, pc in zip(grads, pcs)]
                shards.append(ops.pack(tensors, bucket.dtype, offsets, [pc.length for pc in pcs]))
                handles.append(None)
                continue
            tensors, lengths = [], []
            for i in bucket.params:
                g = self._params[i].grad
                numel = self.layout.params[i].numel
                tensors.append(g if g is not None else self._zeros(numel, bucket.dtype))
                lengths.append(numel)
            if bucket.padded > bucket.length:
                tensors.append(self._zeros(bucket.padded - bucket.length, bucket.dtype))
                lengths.append(bucket.padded - bucket.length)
            flat = ops.pack(tensors, bucket.dtype, [0] * len(tensors), lengths)
            shard = torch.empty(bucket.shard, dtype=bucket.dtype, device=self._device)
            handles.append(self._comm.reduce_scatter(shard, flat, f"the gradient reduce-scatter of bucket {b}"))
            shards.append(shard)
        return shards, handles

    def _sharded_step(self, active: list[bool]) -> None:
        n_buckets = len(self.layout.buckets)
        self._rms_sq = torch.zeros(len(self._params), dtype=torch.float64, device=self._device)
        shards, rs_handles = self._grad_shards(active)
        gathers: list = [None] * n_buckets
        param_gathers: list = [None] * n_buckets
        for b in range(n_buckets):  # momentum + AdamW on the local slice; DP gather of U issued per bucket
            if rs_handles[b] is not None:
                rs_handles[b].wait()
                shards[b].div_(self.world_size)
            self._adamw_pieces(b, shards[b], active)
            if self._plans[b] is None:
                param_gathers[b] = self._issue_param_gather(b)
            else:
                gathers[b] = self._issue_ns_gather(self._plans[b], shards[b], active)
        scatters: list = [None] * n_buckets
        for b in range(n_buckets):  # NS as each bucket's gather lands (later gathers still in flight)
            if gathers[b] is None:
                continue
            plan, (u_local, recv, handle) = self._plans[b], gathers[b]
            outs = self._newton_schulz(plan, recv, handle)
            if self.mode == "gather":
                o_local = plan.keep.pack(resolver(u_local, outs), self._ns_dtype, self._device)
                self._apply_muon(plan, o_local, active)
                param_gathers[b] = self._issue_param_gather(b)
            else:
                scatters[b] = self._issue_scatter(plan, outs)
        for b in range(n_buckets):  # owner mode: update pieces come back, apply, all-gather
            if scatters[b] is None:
                continue
            plan, (recv, handle) = self._plans[b], scatters[b]
            if handle is not None:
                handle.wait()
            o_local = torch.empty(plan.local_length, dtype=self._ns_dtype, device=self._device)
            plan.scatter_recv.unpack_(recv, resolver(o_local, []))
            self._apply_muon(plan, o_local, active)
            param_gathers[b] = self._issue_param_gather(b)
        for b in range(n_buckets):
            full, handle = param_gathers[b]
            handle.wait()
            names = self.layout.buckets[b].params
            ops.unpack_(full[:self.layout.buckets[b].length], [self._params[i] for i in names], [0] * len(names),
                        [self.layout.params[i].numel for i in names])
        if self.track_update_rms:
            self._pending_rms = (self._comm.all_reduce(self._rms_sq, "the update-RMS all-reduce"),
                                 self._rms_sq, [i for i, a in enumerate(active) if a])

    def _issue_ns_gather(self, plan: BucketPlan, shard: Tensor, active: list[bool]):
        u_local = torch.empty(plan.local_length, dtype=self._ns_dtype, device=self._device)
        by_config: dict[tuple, list] = defaultdict(list)
        for pc, off in zip(plan.pieces, plan.local_offsets):
            if not active[pc.param]:
                u_local[off:off + pc.length].zero_()
                continue
            p = self._params[pc.param]
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros(pc.length, dtype=p.dtype, device=p.device)
            g = self.param_groups[self.layout.params[pc.param].group]
            by_config[(g["momentum"], g["nesterov"])].append(
                (state["momentum_buffer"], shard[pc.shard_offset:pc.shard_offset + pc.length],
                 u_local[off:off + pc.length]))
        for (mu, nesterov), triples in by_config.items():
            bufs, grads, outs = zip(*triples)
            ops.muon_momentum_(bufs, grads, outs, mu, nesterov)
        send = plan.gather_send.pack(resolver(u_local, []), self._ns_dtype, self._device)
        if not plan.needs_collective:
            return u_local, send, None
        recv = torch.empty(sum(plan.gather_recv.splits), dtype=self._ns_dtype, device=self._device)
        handle = self._comm.all_to_all(recv, send, plan.gather_recv.splits, plan.gather_send.splits,
                                       "all_to_all:gather", f"the NS gather of bucket {plan.bucket}")
        return u_local, recv, handle

    def _newton_schulz(self, plan: BucketPlan, recv: Tensor, handle) -> list[Tensor]:
        if handle is not None:
            handle.wait()
        inputs = batch_views(plan, self._ns_dtype, self._device)
        plan.gather_recv.unpack_(recv, resolver(None, inputs))
        # One grouped NS per (schedule, eps) of the bucket: all its shapes share each step's launches.
        members: dict[tuple, list[int]] = defaultdict(list)
        for i, batch in enumerate(plan.batches):
            g = self.param_groups[batch.group]
            members[(tuple(ns_schedule(g["ns_coefficients"], g["ns_steps"])), g["ns_eps"])].append(i)
        outs: list[Tensor | None] = [None] * len(inputs)
        for (schedule, eps), idx in members.items():
            for i, out in zip(idx, ops.newton_schulz_grouped([inputs[i] for i in idx], schedule, eps)):
                outs[i] = out
        return outs

    def _issue_scatter(self, plan: BucketPlan, outs: list[Tensor]):
        send = plan.scatter_send.pack(resolver(None, outs), self._ns_dtype, self._device)
        if not plan.needs_collective:
            return send, None
        recv = torch.empty(sum(plan.scatter_recv.splits), dtype=self._ns_dtype, device=self._device)
        handle = self._comm.all_to_all(recv, send, plan.scatter_recv.splits, plan.scatter_send.splits,
                                       "all_to_all:scatter", f"the NS scatter of bucket {plan.bucket}")
        return recv, handle

    def _apply_muon(self, plan: BucketPlan, o_local: Tensor, active: list[bool]) -> None:
        params, updates, lrs, wds, scales = [], [], [], [], []
        for pc, off in zip(plan.pieces, plan.local_offsets):
            if not active[pc.param]:
                continue
            p, info = self._params[pc.param], self.layout.params[pc.param]
            g = self.param_groups[info.group]
            _, rows, cols = matrix_shape(info.shape)
            scale = update_scale(g["adjust_lr"], g["rms_target"], rows, cols)
            params.append(p.view(-1)[pc.param_offset:pc.param_offset + pc.length])
            updates.append(o_local[off:off + pc.length])
            lrs.append(g["lr"])
            wds.append(g["weight_decay"])
            scales.append(scale)
        ops.muon_apply_(params, updates, lrs, wds, scales)
        if self.track_update_rms and updates:
            norms = torch.stack(torch._foreach_norm(updates)).double()
            index = torch.tensor([pc.param for pc in plan.pieces if active[pc.param]], device=self._device)
            factors = torch.tensor(scales, dtype=torch.float64, device=self._device) ** 2
            self._rms_sq.index_add_(0, index, norms.square() * factors)

    def _adamw_pieces(self, b: int, shard: Tensor, active: list[bool]) -> None:
        by_group: dict[int, list] = defaultdict(list)
        for pc in self._pieces[b]:
            info = self.layout.params[pc.param]
            if info.use_muon or not active[pc.param]:
                continue
            by_group[info.group].append(pc)
        for gi, pcs in by_group.items():
            g = self.param_groups[gi]
            views = [self._params[pc.param].view(-1)[pc.param_offset:pc.param_offset + pc.length] for pc in pcs]
            states = [self.state[self._params[pc.param]] for pc in pcs]
            for state, view in zip(states, views):
                init_adamw_state(state, view)
            rms = adamw_step(views, [shard[pc.shard_offset:pc.shard_offset + pc.length] for pc in pcs], states,
                             lr=g["lr"], weight_decay=g["weight_decay"], betas=tuple(g["adamw_betas"]),
                             eps=g["adamw_eps"], want_rms=self.track_update_rms)
            if rms:
                index = torch.tensor([pc.param for pc in pcs], device=self._device)
                lengths = torch.tensor([pc.length for pc in pcs], dtype=torch.float64, device=self._device)
                self._rms_sq.index_add_(0, index, torch.stack(rms).double().square() * lengths)

    def _issue_param_gather(self, b: int):
        bucket, pcs = self.layout.buckets[b], self._pieces[b]
        tensors = [self._params[pc.param] for pc in pcs]
        offsets, lengths = [pc.param_offset for pc in pcs], [pc.length for pc in pcs]
        held = sum(lengths)
        if held < bucket.shard:
            tensors.append(self._zeros(bucket.shard - held, bucket.dtype))
            offsets.append(0)
            lengths.append(bucket.shard - held)
        mine = ops.pack(tensors, bucket.dtype, offsets, lengths)
        full = torch.empty(bucket.padded, dtype=bucket.dtype, device=self._device)
        return full, self._comm.all_gather(full, mine, f"the parameter all-gather of bucket {b}")

    # -- observability ------------------------------------------------------------------------

    def _finish_rms(self) -> None:
        if self._pending_rms is None:
            return
        handle, sq, active = self._pending_rms
        self._pending_rms = None
        handle.wait()
        sq = sq.cpu()
        self._rms_names = [self.layout.params[i].name for i in active]
        self._rms_values = torch.tensor([math.sqrt(float(sq[i]) / max(self.layout.params[i].numel, 1))
                                         for i in active]) if active else None

    @property
    def update_rms(self) -> dict[str, float]:
        """RMS of each parameter's lr-free update in the last step (over the whole parameter)."""
        self._finish_rms()
        return super().update_rms

    def state_bytes(self) -> int:
        """Bytes of optimizer state (momentum, AdamW moments and step counts) held by this rank."""
        return sum(v.numel() * v.element_size() for s in self.state.values() for v in s.values()
                   if torch.is_tensor(v))

    def ns_flops_per_step(self) -> int:
        """Multiply-adds of the Newton–Schulz work this rank does per step."""
        steps = {g["ns_steps"] for g in self.param_groups}
        return sum(p.ns_flops for p in self._plans if p is not None) * max(steps)

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """This rank's shard, with the format version and the layout (see `distributed_state.py`)."""
        self._finish_rms()
        return shard_state_dict(torch.optim.Optimizer.state_dict(self), self.layout, self.rank, self.skipped_steps)

    def load_state_dict(self, state_dict: dict | list[dict]) -> None:
        """Accepts this rank's own shard; the list of all shards of a run at any world size or bucket
        size (resharded here); or a single-process `Muon` state dict."""
        if isinstance(state_dict, (list, tuple)):
            return self._load_full(to_muon_state_dict(list(state_dict)))
        if is_shard(state_dict):
            meta = state_dict[KEY]
            if meta["world_size"] == 1:
                return self._load_full(to_muon_state_dict([state_dict]))
            if (meta["world_size"], meta.get("rank")) != (self.world_size, self.rank) or \
                    meta["layout"] != self.layout.describe():
                raise ValueError(
                    f"DistributedMuon: this shard was written by rank {meta.get('rank')} of "
                    f"{meta['world_size']} with another layout; to reshard, pass the list of all "
                    f"{meta['world_size']} shards (load every rank's file)")
            torch.optim.Optimizer.load_state_dict(self, {k: v for k, v in state_dict.items() if k != KEY})
            self.skipped_steps = int(meta.get("skipped_steps", 0))
            return None
        return self._load_full(state_dict)

    def _load_full(self, muon_state_dict: dict) -> None:
        local = local_state_from_muon(muon_state_dict, self.layout, self.rank)
        torch.optim.Optimizer.load_state_dict(self, {"state": local, "param_groups": muon_state_dict["param_groups"]})
        self.skipped_steps = int(muon_state_dict.get("muonext", {}).get("skipped_steps", 0))

    def gather_muon_state_dict(self) -> dict:
        """The full single-process `Muon` state dict, on every rank (a collective: all ranks call it)."""
        shards: list = [None] * self.world_size
        dist.all_gather_object(shards, self.state_dict(), group=self._comm.group)
        return to_muon_state_dict(shards)
