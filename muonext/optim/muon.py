"""Muon with decoupled weight decay and AdamW-matched update RMS (Moonlight, DESIGN.md §2).

For a matrix W (A × B) with gradient G, momentum μ, learning rate η and weight decay λ:

    M ← μ·M + G                         sum-form momentum
    U ← G + μ·M  (Nesterov) or M
    O ← NS(U)                           Newton–Schulz, batched over every matrix of equal shape
    W ← W·(1 − η·λ) − η·s(A, B)·O       s = rms_target·sqrt(max(A, B)) with "match_rms_adamw"

A 3-D tensor (E, A, B) is E independent matrices (MoE experts); other shapes are viewed as
(shape[0], rest). Parameters that are not hidden matrices take the AdamW path with the same lr and
weight decay (see `routing.py`).
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
from .coefficients import ns_schedule
from .hparams import update_scale, validate_group
from .routing import is_muon_param

__all__ = ["Muon", "NonFiniteGradientError", "matrix_shape"]

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float64)


class NonFiniteGradientError(FloatingPointError):
    """A gradient holds NaN or Inf; the message names the parameter."""


def matrix_shape(shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
    """(batch, rows, cols) of the matrices Muon sees in a tensor of this shape."""
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    if len(shape) == 3:
        return shape[0], shape[1], shape[2]
    return 1, shape[0], math.prod(shape[1:])


@dataclass
class _Item:
    """One parameter with a gradient in this step."""

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
        items = self._collect()
        if self.check_finite and not self._all_finite(items):
            return loss
        muon_items = [it for it in items if self._uses_muon(it.group, it.name, it.param)]
        adamw_items = [it for it in items if not self._uses_muon(it.group, it.name, it.param)]
        rms_names, rms_values = [], []
        for names, values in (self._muon_step(muon_items), self._adamw_step(adamw_items)):
            rms_names += names
            rms_values += values
        if self.track_update_rms:
            self._rms_names = rms_names
            self._rms_values = torch.stack(rms_values).float() if rms_values else None
        return loss

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
                items.append(_Item(group, p, p.grad, name))
        return items

    def _all_finite(self, items: list[_Item]) -> bool:
        if not items:
            return True
        maxima = torch._foreach_norm([it.grad for it in items], float("inf"))
        finite = torch.stack(maxima).isfinite()
        if bool(finite.all()):  # the one host sync of the check
            return True
        bad = [it.name for it, ok in zip(items, finite.tolist()) if not ok]
        if not self.skip_nonfinite:
            raise NonFiniteGradientError(
                f"Muon: non-finite (NaN/Inf) gradient in {', '.join(bad[:5])}"
                + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
                + "; pass skip_nonfinite=True to skip such steps instead"
            )
        self.skipped_steps += 1
        return False

    def _muon_step(self, items: list[_Item]) -> tuple[list[str], list[Tensor]]:
        if not items:
            return [], []
        updates = self._orthogonalised_momentum(items)
        scales = []
        for it in items:
            _, rows, cols = matrix_shape(it.param.shape)
            scales.append(update_scale(it.group["adjust_lr"], it.group["rms_target"], rows, cols))
        ops.muon_apply_(
            [it.param for it in items], updates, [it.group["lr"] for it in items],
            [it.group["weight_decay"] for it in items], scales,
        )
        if not self.track_update_rms:
            return [], []
        norms = torch._foreach_norm(updates)
        return [it.name for it in items], [n * (s / math.sqrt(max(u.numel(), 1))) for n, s, u in
                                           zip(norms, scales, updates)]

    def _orthogonalised_momentum(self, items: list[_Item]) -> list[Tensor]:
        """Momentum, then NS: matrices of one shape and schedule form one batch, which the fused
        momentum kernel writes directly (no concatenation); one newton_schulz_grouped call per schedule
        orthogonalises all the batches."""
        batches: dict[tuple, list[int]] = defaultdict(list)
        for i, it in enumerate(items):
            g = it.group
            _, rows, cols = matrix_shape(it.param.shape)
            schedule = tuple(ns_schedule(g["ns_coefficients"], g["ns_steps"]))
            batches[(schedule, g["ns_eps"], g["ns_dtype"], rows, cols)].append(i)

        ns_inputs: list[Tensor | None] = [None] * len(items)
        planned = []
        for (schedule, eps, dtype, rows, cols), idx in batches.items():
            sizes = [matrix_shape(items[i].param.shape)[0] for i in idx]
            batch = torch.empty(sum(sizes), rows, cols, dtype=dtype, device=items[idx[0]].param.device)
            for i, piece in zip(idx, batch.split(sizes)):
                ns_inputs[i] = piece.view(items[i].param.shape)
            planned.append((schedule, eps, idx, sizes, batch))

        by_config: dict[tuple, list[int]] = defaultdict(list)
        for i, it in enumerate(items):
            state = self.state[it.param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(it.param, memory_format=torch.contiguous_format)
            by_config[(it.group["momentum"], it.group["nesterov"])].append(i)
        for (mu, nesterov), idx in by_config.items():
            ops.muon_momentum_(
                [self.state[items[i].param]["momentum_buffer"] for i in idx], [items[i].grad for i in idx],
                [ns_inputs[i] for i in idx], mu, nesterov,
            )

        # One grouped NS per (schedule, eps, dtype): on CUDA every shape shares each step's launches.
        grouped: dict[tuple, list[tuple]] = defaultdict(list)
        for schedule, eps, idx, sizes, batch in planned:
            grouped[(schedule, eps, batch.dtype)].append((idx, sizes, batch))
        updates: list[Tensor | None] = [None] * len(items)
        for (schedule, eps, _), members in grouped.items():
            results = ops.newton_schulz_grouped([batch for _, _, batch in members], schedule, eps)
            for (idx, sizes, _), result in zip(members, results):
                for i, piece in zip(idx, result.split(sizes)):
                    updates[i] = piece.view(items[i].param.shape)
        return updates

    def _adamw_step(self, items: list[_Item]) -> tuple[list[str], list[Tensor]]:
        by_group: dict[int, list[_Item]] = defaultdict(list)
        for it in items:
            by_group[id(it.group)].append(it)
        names, values = [], []
        for group_items in by_group.values():
            g = group_items[0].group
            for it in group_items:
                init_adamw_state(self.state[it.param], it.param)
            rms = adamw_step(
                [it.param for it in group_items], [it.grad for it in group_items],
                [self.state[it.param] for it in group_items], lr=g["lr"], weight_decay=g["weight_decay"],
                betas=tuple(g["adamw_betas"]), eps=g["adamw_eps"], want_rms=self.track_update_rms,
            )
            if rms is not None:
                names += [it.name for it in group_items]
                values += rms
        return names, values

    # -- observability and state --------------------------------------------------------------

    @property
    def update_rms(self) -> dict[str, float]:
        """RMS of each parameter's lr-free update in the last step (reading it syncs the device)."""
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
