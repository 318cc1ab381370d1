"""Muon with decoupled weight decay and AdamW-matched update RMS (Moonlight, DESIGN.md §2).

For a matrix W (A × B) with gradient G, momentum μ, learning rate η and weight decay λ:

    M ← μ·M + G                         sum-form momentum
    U ← G + μ·M  (Nesterov) or M
    O ← NS(U)                           Newton–Schulz, batched over every matrix of equal shape
    W ← W·(1 − η·λ) − η·s(A, B)·O       s = rms_target·sqrt(max(A, B)) with "match_rms_adamw"

A 3-D tensor (E, A, B) is E independent matrices (MoE experts); other shapes are viewed as
(shape[0], rest). Parameters that are not hidden matrices take the AdamW path with the same lr and
weight decay (see `routing.py`).

DTensor parameters (FSDP2's `fully_shard`, expert parallelism) are stepped on their local shards; a
matrix split across ranks is reassembled on one owner rank for Newton–Schulz (`sharded_step.py`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim import Optimizer

from .. import ops
from .adamw import adamw_step, init_adamw_state
from .dist_comm import DistributedMuonError
from .dtensor_params import is_dtensor, local
from .hparams import update_scale, validate_group
from .ns_batches import batch_flops, newton_schulz_batches, ns_key
from .routing import is_muon_param
from .shapes import matrix_shape
from .sharded_step import ShardedStep

__all__ = ["Muon", "NonFiniteGradientError", "matrix_shape"]

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float64)


class NonFiniteGradientError(FloatingPointError):
    """A gradient holds NaN or Inf; the message names the parameter."""


@dataclass
class _Item:
    """One parameter with a gradient in this step; `grad` is the local tensor (a DTensor's shard)."""

    group: dict
    param: Tensor
    grad: Tensor
    name: str


class Muon(Optimizer):
    """Muon for hidden matrices and AdamW for the rest, in one `torch.optim.Optimizer`.

    Param groups may set `use_muon=True/False`; with the default `None` each parameter is routed by
    `routing.is_muon_param` (≥2-D and not named like an embedding or output head). Use
    `muon_param_groups(model)` to route by module type and name.

    After each step `update_rms` maps parameter names to the RMS of their lr-free update
    (s·O for Muon, m̂/(√v̂+ε) for AdamW) — about `rms_target` for Muon with "match_rms_adamw".
    Non-finite gradients raise `NonFiniteGradientError`, or skip the whole step (counted in
    `skipped_steps`) when `skip_nonfinite=True`. `p.grad` is never modified.

    DTensor parameters may be mixed with plain ones: every rank of the default process group must hold
    the same parameter list and call `step()` together. Their state is created at construction (DCP's
    `get_optimizer_state_dict` needs the same keys on every rank), as DTensors placed like the
    parameters, so `torch.distributed.checkpoint` saves and reshards it.
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
    ):
        defaults = dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
            ns_coefficients=ns_coefficients, adjust_lr=adjust_lr, rms_target=rms_target, ns_dtype=ns_dtype,
            adamw_betas=adamw_betas, adamw_eps=adamw_eps, ns_eps=ns_eps, use_muon=use_muon,
        )
        self.skip_nonfinite = bool(skip_nonfinite)
        self.check_finite = bool(check_finite)
        self.track_update_rms = bool(track_update_rms)
        self.skipped_steps = 0
        self._rms_names: list[str] = []
        self._rms_values: Tensor | None = None
        self._sharded: ShardedStep | None = None
        self.comm_bytes: dict[str, dict[str, int]] = {}  # per step, by collective kind (DTensor parameters)
        self.ns_flops_last_step = 0  # multiply-adds of this rank's Newton–Schulz in the last step
        super().__init__(params, defaults)

    # -- construction -------------------------------------------------------------------------

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        validate_group(group)
        devices = {p.device for g in self.param_groups for p in g["params"]}
        if len(devices) > 1:
            raise ValueError(f"Muon: all parameters must be on one device, got {sorted(map(str, devices))}")
        for index, p in enumerate(group["params"]):
            name = self._param_name(len(self.param_groups) - 1, index)
            if not p.is_floating_point():
                raise TypeError(f"Muon: parameter {name} must be floating point, got {p.dtype}")
            if self._uses_muon(group, name, p) and p.dtype not in KERNEL_DTYPES:
                raise TypeError(f"Muon: matrix parameter {name} must be float32, bfloat16 or float64, got {p.dtype}")
        if self._sharded is not None:
            self._sharded.add_group(len(self.param_groups) - 1)
        elif any(is_dtensor(p) for p in group["params"]):
            self._sharded = ShardedStep(self)  # takes every group added so far

    def _param_name(self, group_index: int, index: int) -> str:
        names = self.param_groups[group_index].get("param_names")
        if names is not None:
            return names[index]
        return f"param_groups[{group_index}].params[{index}]"

    @staticmethod
    def _uses_muon(group: dict, name: str, p: Tensor) -> bool:
        if group["use_muon"] is not None:
            return group["use_muon"]
        return is_muon_param(name if "param_names" in group else None, p)

    # -- the step ---------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._sharded is None:
            self._step(self._collect())
            return loss
        self._sharded.new_step()
        try:
            agreed = self._sharded.agree(self._collect())  # the same parameters on every rank, or None
            if agreed is not None:
                self._step([_Item(*fields) for fields in agreed])
        except (DistributedMuonError, NonFiniteGradientError):
            raise  # every rank raises these together, or the record names the rank that failed
        except BaseException as exc:
            self._sharded.record_failure(exc)
            raise
        finally:
            self.comm_bytes = self._sharded.comm_bytes()
        return loss

    def _step(self, items: list[_Item]) -> None:
        if self._sharded is None and self.check_finite and not self._all_finite(items):
            return
        muon_items = [it for it in items if self._uses_muon(it.group, it.name, it.param)]
        adamw_items = [it for it in items if not self._uses_muon(it.group, it.name, it.param)]
        rms_items, rms_values = [], []
        for done, values in (self._muon_step(muon_items), self._adamw_step(adamw_items)):
            rms_items += done
            rms_values += values
        if not self.track_update_rms:
            return
        if self._sharded is not None:
            self._sharded.reduce_rms(rms_items, rms_values)
        else:
            self._rms_names = [it.name for it in rms_items]
            self._rms_values = torch.stack(rms_values).float() if rms_values else None

    def _collect(self) -> list[_Item]:
        items = []
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                name = self._param_name(gi, pi)
                if p.grad.is_sparse:
                    raise TypeError(f"Muon does not support sparse gradients (parameter {name})")
                if p.grad.shape != p.shape:
                    raise ValueError(f"Muon: gradient of {name} has shape {list(p.grad.shape)}, "
                                     f"parameter has {list(p.shape)}")
                items.append(_Item(group, p, local(p.grad), name))
        return items

    def _all_finite(self, items: list[_Item]) -> bool:
        if not items:
            return True
        maxima = torch._foreach_norm([it.grad for it in items], float("inf"))
        finite = torch.stack(maxima).isfinite()
        if bool(finite.all()):  # the one host sync of the check
            return True
        return self.nonfinite([it.name for it, ok in zip(items, finite.tolist()) if not ok])

    def nonfinite(self, bad: list[str]) -> bool:
        """Raises NonFiniteGradientError naming `bad`, or counts a skipped step (returns False)."""
        if not self.skip_nonfinite:
            raise NonFiniteGradientError(
                f"{type(self).__name__}: non-finite (NaN/Inf) gradient in {', '.join(bad[:5])}"
                + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
                + "; pass skip_nonfinite=True to skip such steps instead"
            )
        self.skipped_steps += 1
        return False

    def _muon_step(self, items: list[_Item]) -> tuple[list[_Item], list[Tensor]]:
        if not items:
            return [], []
        updates = self._orthogonalised_momentum(items)
        scales = []
        for it in items:
            _, rows, cols = matrix_shape(it.param.shape)  # a DTensor's shape is the whole tensor's
            scales.append(update_scale(it.group["adjust_lr"], it.group["rms_target"], rows, cols))
        ops.muon_apply_(
            [local(it.param) for it in items], updates, [it.group["lr"] for it in items],
            [it.group["weight_decay"] for it in items], scales,
        )
        if not self.track_update_rms:
            return [], []
        norms = torch._foreach_norm(updates)
        return items, [n * (s / math.sqrt(max(u.numel(), 1))) for n, s, u in zip(norms, scales, updates)]

    def _momentum_buffer(self, p: Tensor) -> Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        return local(state["momentum_buffer"])

    def _orthogonalised_momentum(self, items: list[_Item]) -> list[Tensor]:
        """Momentum, then NS. Whole matrices of one shape and schedule form one batch, which the fused
        momentum kernel writes directly (no concatenation); one newton_schulz_grouped call per schedule
        orthogonalises all the batches. Matrices split across ranks go to their owners in between."""
        split = self._sharded.split_items(items) if self._sharded is not None else {}
        batches: dict[tuple, list[int]] = defaultdict(list)
        ns_inputs: list[Tensor | None] = [None] * len(items)
        for i, it in enumerate(items):
            if i in split:
                ns_inputs[i] = torch.empty_like(it.grad, dtype=it.group["ns_dtype"])
            else:
                batches[ns_key(it.group, matrix_shape(it.grad.shape)[1:])].append(i)
        planned = []
        for key, idx in batches.items():
            sizes = [matrix_shape(items[i].grad.shape)[0] for i in idx]
            batch = torch.empty(sum(sizes), *key[3:], dtype=key[2], device=items[idx[0]].grad.device)
            for i, piece in zip(idx, batch.split(sizes)):
                ns_inputs[i] = piece.view(items[i].grad.shape)
            planned.append((key, idx, sizes, batch))

        by_config: dict[tuple, list[int]] = defaultdict(list)
        for i, it in enumerate(items):
            by_config[(it.group["momentum"], it.group["nesterov"])].append(i)
        for (mu, nesterov), idx in by_config.items():
            ops.muon_momentum_(
                [self._momentum_buffer(items[i].param) for i in idx], [items[i].grad for i in idx],
                [ns_inputs[i] for i in idx], mu, nesterov,
            )

        exchanging = self._sharded.start_exchanges(items, ns_inputs, split) if split else None
        updates: list[Tensor | None] = [None] * len(items)  # NS of whole matrices while pieces travel
        whole = [(key, batch) for key, _, _, batch in planned]
        self.ns_flops_last_step = batch_flops(whole)
        results = newton_schulz_batches(whole)
        for (_, idx, sizes, _), result in zip(planned, results):
            for i, piece in zip(idx, result.split(sizes)):
                updates[i] = piece.view(items[i].grad.shape)
        if exchanging is not None:
            for i, update in self._sharded.finish_exchanges(items, exchanging).items():
                updates[i] = update
        return updates

    def _adamw_step(self, items: list[_Item]) -> tuple[list[_Item], list[Tensor]]:
        by_group: dict[int, list[_Item]] = defaultdict(list)
        for it in items:
            by_group[id(it.group)].append(it)
        done, values = [], []
        for group_items in by_group.values():
            g = group_items[0].group
            states = []
            for it in group_items:
                state = self.state[it.param]
                init_adamw_state(state, it.param)
                states.append({k: local(v) for k, v in state.items()})  # same tensors, local views
            rms = adamw_step(
                [local(it.param) for it in group_items], [it.grad for it in group_items], states,
                lr=g["lr"], weight_decay=g["weight_decay"], betas=tuple(g["adamw_betas"]), eps=g["adamw_eps"],
                want_rms=self.track_update_rms,
            )
            if rms is not None:
                done += group_items
                values += rms
        return done, values

    # -- observability and state --------------------------------------------------------------

    @property
    def update_rms(self) -> dict[str, float]:
        """RMS of each parameter's lr-free update in the last step (reading it syncs the device); for a
        DTensor, of the whole update over all ranks."""
        if self._sharded is not None:
            self._rms_names, self._rms_values = self._sharded.finish_rms(self._rms_names, self._rms_values)
        if self._rms_values is None:
            return {}
        return dict(zip(self._rms_names, self._rms_values.tolist()))

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["muonext"] = {"format": 1, "skipped_steps": self.skipped_steps}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        extra = state_dict.get("muonext", {})
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "muonext"})
        self.skipped_steps = int(extra.get("skipped_steps", 0))
