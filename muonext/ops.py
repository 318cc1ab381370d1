"""Typed wrappers of the `torch.ops.muonext.*` kernels: the only module that calls them.

Each wrapper runs the compiled kernel when the extension has one for the tensor's device and the
pure-PyTorch reference (`reference.py`) otherwise. Fake (meta) kernels are registered here so that
`torch.compile` traces the ops without graph breaks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor

from . import reference
from ._extension import CPU_FAST_KERNELS, HAS_EXT

__all__ = [
    "newton_schulz",
    "newton_schulz_grouped",
    "ns_backend",
    "muon_momentum_",
    "muon_apply_",
    "pack",
    "unpack_",
    "skinny_linear",
    "grouped_skinny_linear",
    "mla_decode_attention",
    "rms_norm_rows",
    "logsumexp_argmax",
    "cpu_fast_kernels",
    "flatten_coefficients",
    "has_kernel",
]


def _kernel_devices(op: str) -> frozenset[str]:
    if not HAS_EXT:
        return frozenset()
    keys = {"cpu": "CPU", "cuda": "CUDA"}
    return frozenset(d for d, k in keys.items() if torch._C._dispatch_has_kernel_for_dispatch_key(f"muonext::{op}", k))


# The torch.ops.muonext ops (every name of __all__ but the helpers). Decided once at import, so the
# per-call check is a constant set lookup that torch.compile folds.
_HELPERS = ("ns_backend", "cpu_fast_kernels", "flatten_coefficients", "has_kernel")
_OPS = tuple(n for n in __all__ if n not in _HELPERS)
_KERNELS = {op: _kernel_devices(op) for op in _OPS}


def has_kernel(op: str, device: torch.device | str) -> bool:
    """Whether the compiled extension has a kernel of `op` for `device` (else the reference runs)."""
    return torch.device(device).type in _KERNELS[op]


def _device_of(tensors: Sequence[Tensor]) -> str:
    return tensors[0].device.type if len(tensors) else "cpu"


def flatten_coefficients(coefficients: Iterable[Sequence[float]] | Sequence[float]) -> list[float]:
    """[(a, b, c), ...] or a flat [a, b, c, ...] → flat list of floats (validated by the op)."""
    flat: list[float] = []
    for item in coefficients:
        if isinstance(item, (int, float)):
            flat.append(float(item))
        else:
            flat.extend(float(v) for v in item)
    return flat


def newton_schulz(
    X: Tensor, coefficients: Iterable[Sequence[float]] | Sequence[float], eps: float = 1e-7
) -> Tensor:
    """Orthogonalises X (rows, cols) or a batch (batch, rows, cols) with one Newton–Schulz step per (a, b, c).

    Works in X's dtype (bf16: fp32 accumulation), returns a new contiguous tensor of X's shape and dtype.
    """
    coeffs = flatten_coefficients(coefficients)
    if X.device.type in _KERNELS["newton_schulz"]:
        return torch.ops.muonext.newton_schulz(X, coeffs, eps)
    _check_ns_args(X, coeffs, eps)
    return reference.newton_schulz_ref(X, coeffs, eps)


def newton_schulz_grouped(
    Xs: Sequence[Tensor], coefficients: Iterable[Sequence[float]] | Sequence[float], eps: float = 1e-7
) -> list[Tensor]:
    """`newton_schulz` of every member of a group: matrices or batches of different shapes, one dtype and
    one device. On CUDA the whole group shares each step's GEMM launches (a handful of launches for all
    the Muon matrices of a model instead of a few per shape)."""
    coeffs = flatten_coefficients(coefficients)
    if not len(Xs):
        return []
    if Xs[0].device.type in _KERNELS["newton_schulz_grouped"]:
        return list(torch.ops.muonext.newton_schulz_grouped(list(Xs), coeffs, eps))
    for i, x in enumerate(Xs):
        _check_ns_args(x, coeffs, eps, op="newton_schulz_grouped", name=f"Xs[{i}]")
        if x.dtype != Xs[0].dtype:
            raise TypeError(f"newton_schulz_grouped: Xs[{i}] has dtype {x.dtype} but Xs[0] has {Xs[0].dtype}")
        if x.device != Xs[0].device:
            raise ValueError(f"newton_schulz_grouped: Xs[{i}] is on {x.device} but Xs[0] is on {Xs[0].device}")
    return reference.newton_schulz_grouped_ref(Xs, coeffs, eps)


def _check_ns_args(X: Tensor, coeffs: list[float], eps: float, op: str = "newton_schulz", name: str = "X") -> None:
    # The reference path raises the same errors as the kernel's checks.
    if X.dim() not in (2, 3):
        raise ValueError(f"{op}: {name} must be 2-D (rows, cols) or 3-D (batch, rows, cols), got shape {list(X.shape)}")
    if X.dtype not in (torch.float32, torch.bfloat16, torch.float64):
        raise TypeError(f"{op}: {name} must be float32, bfloat16 or float64, got {X.dtype}")
    if not coeffs or len(coeffs) % 3:
        raise ValueError(f"{op}: coefficients must hold (a, b, c) for each step, got {len(coeffs)} numbers")
    if not all(torch.isfinite(torch.tensor(coeffs)).tolist()) or not (eps >= 0 and eps != float("inf")):
        raise ValueError(f"{op}: coefficients and eps must be finite (eps >= 0)")


@contextlib.contextmanager
def ns_backend(name: str) -> Iterator[None]:
    """Within the block, bf16 Newton–Schulz on CUDA runs the `name` kernels: "sm80" (mma.sync, any GPU of
    compute capability >= 8.0), "sm90" (CUTLASS wgmma/TMA grouped GEMMs, compute capability 9.0, a build
    with sm_90a) or "auto". The process-wide default comes from MUONEXT_NS_BACKEND (default "auto")."""
    if not HAS_EXT:
        raise RuntimeError("ns_backend: the compiled extension is not loaded")
    from ._extension import _C

    before = _C.ns_backend()
    _C.set_ns_backend(name)
    try:
        yield
    finally:
        _C.set_ns_backend(before)


def muon_momentum_(
    bufs: Sequence[Tensor], grads: Sequence[Tensor], outs: Sequence[Tensor], momentum: float, nesterov: bool
) -> None:
    """In place on bufs: M ← μ·M + G for every triple; outs ← G + μ·M (Nesterov) or M, cast to outs' dtypes.

    outs may be views into one preallocated batch, so the Newton–Schulz input is written only once.
    """
    if not len(bufs):
        return
    if _device_of(bufs) in _KERNELS["muon_momentum_"]:
        torch.ops.muonext.muon_momentum_(list(bufs), list(grads), list(outs), float(momentum), bool(nesterov))
    else:
        reference.muon_momentum_ref(bufs, grads, outs, momentum, nesterov)


def muon_apply_(
    params: Sequence[Tensor],
    updates: Sequence[Tensor],
    lrs: Sequence[float],
    weight_decays: Sequence[float],
    scales: Sequence[float],
) -> None:
    """In place on params: W ← W·(1 − lr·wd) − lr·scale·U for every tensor, in one call."""
    if not len(params):
        return
    args = (list(params), list(updates), [float(v) for v in lrs], [float(v) for v in weight_decays],
            [float(v) for v in scales])
    if _device_of(params) in _KERNELS["muon_apply_"]:
        torch.ops.muonext.muon_apply_(*args)
    else:
        reference.muon_apply_ref(*args)


def _ranges(tensors: Sequence[Tensor], offsets: Sequence[int] | None, lengths: Sequence[int] | None):
    offsets = [0] * len(tensors) if offsets is None else [int(o) for o in offsets]
    lengths = [t.numel() for t in tensors] if lengths is None else [int(n) for n in lengths]
    return offsets, lengths


def pack(
    tensors: Sequence[Tensor],
    dtype: torch.dtype,
    offsets: Sequence[int] | None = None,
    lengths: Sequence[int] | None = None,
) -> Tensor:
    """One flat `dtype` buffer holding tensors[i].flatten()[offsets[i] : offsets[i] + lengths[i]] in order
    (whole tensors when offsets/lengths are None)."""
    offsets, lengths = _ranges(tensors, offsets, lengths)
    if not len(tensors):  # nothing for the dispatcher to choose a device by
        return torch.empty(0, dtype=dtype)
    if _device_of(tensors) in _KERNELS["pack"]:
        return torch.ops.muonext.pack(list(tensors), offsets, lengths, dtype)
    return reference.pack_ref(tensors, offsets, lengths, dtype)


def unpack_(
    flat: Tensor,
    outs: Sequence[Tensor],
    offsets: Sequence[int] | None = None,
    lengths: Sequence[int] | None = None,
) -> None:
    """Inverse of `pack`: writes consecutive pieces of flat into the ranges of outs, cast to their dtypes."""
    offsets, lengths = _ranges(outs, offsets, lengths)
    if flat.device.type in _KERNELS["unpack_"]:
        torch.ops.muonext.unpack_(flat, list(outs), offsets, lengths)
    else:
        reference.unpack_ref(flat, outs, offsets, lengths)


def skinny_linear(x: Tensor, weight: Tensor) -> Tensor:
    """x (..., K) · weight (N, K)ᵀ, for few rows of x (a decode step): on CPU in fp32 an AVX-512 kernel
    that streams weight once and beats MKL's sgemm up to ~64 rows; elsewhere F.linear. No autograd."""
    if x.device.type in _KERNELS["skinny_linear"]:
        return torch.ops.muonext.skinny_linear(x, weight)
    return reference.skinny_linear_ref(x, weight)


def grouped_skinny_linear(x: Tensor, weight: Tensor, counts: Tensor) -> Tensor:
    """x (M, K) with rows sorted by group (counts (G,) rows each) · weight[g] (N, K)ᵀ per group -> (M, N):
    the routed experts of a decode step without padding. No autograd."""
    if x.device.type in _KERNELS["grouped_skinny_linear"]:
        return torch.ops.muonext.grouped_skinny_linear(x, weight, counts)
    return reference.grouped_skinny_linear_ref(x, weight, counts)


def cpu_fast_kernels() -> bool:
    """Whether this CPU runs the extension's AVX-512 decode kernels (x86-64 with AVX-512F)."""
    return CPU_FAST_KERNELS


def mla_decode_attention(
    q_nope: Tensor, q_rope: Tensor, cache: Tensor, kv_b_weight: Tensor, mask: Tensor, scale: float
) -> Tensor:
    """One decode step of MLA attention, kv_b_proj absorbed: q_nope (B, H, Qn), q_rope (B, H, R) rotated,
    cache (B, S, r + R) = [c | k_rope], kv_b_weight (H·(Qn + V), r), mask (B, S) additive -> (B, H·V).
    The fused CPU kernel for fp32 where cpu_fast_kernels(), the einsum reference elsewhere. No autograd."""
    if _fast_cpu("mla_decode_attention", q_nope):
        return torch.ops.muonext.mla_decode_attention(q_nope, q_rope, cache, kv_b_weight, mask, float(scale))
    return reference.mla_decode_attention_ref(q_nope, q_rope, cache, kv_b_weight, mask, scale)


def rms_norm_rows(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x / sqrt(mean(x²) + eps) · weight over the last dimension, in one pass per row on CPU fp32 where
    cpu_fast_kernels() (F.rms_norm elsewhere). No autograd."""
    if _fast_cpu("rms_norm_rows", x):
        return torch.ops.muonext.rms_norm_rows(x, weight, float(eps))
    return reference.rms_norm_rows_ref(x, weight, eps)


def logsumexp_argmax(logits: Tensor) -> tuple[Tensor, Tensor]:
    """(logsumexp, argmax) of each row of (B, V) logits: two passes per row on CPU fp32 where
    cpu_fast_kernels(), torch.logsumexp / argmax elsewhere. A row with a NaN gives (NaN, its first NaN)."""
    if _fast_cpu("logsumexp_argmax", logits):
        return torch.ops.muonext.logsumexp_argmax(logits)
    return reference.logsumexp_argmax_ref(logits)


def _fast_cpu(op: str, x: Tensor) -> bool:
    return CPU_FAST_KERNELS and x.dtype == torch.float32 and x.device.type in _KERNELS[op]


if HAS_EXT:

    @torch.library.register_fake("muonext::newton_schulz")
    def _newton_schulz_fake(X, coefficients, eps):
        return torch.empty_like(X, memory_format=torch.contiguous_format)

    @torch.library.register_fake("muonext::newton_schulz_grouped")
    def _newton_schulz_grouped_fake(Xs, coefficients, eps):
        return [torch.empty_like(x, memory_format=torch.contiguous_format) for x in Xs]

    @torch.library.register_fake("muonext::muon_momentum_")
    def _muon_momentum_fake(bufs, grads, outs, momentum, nesterov):
        return None

    @torch.library.register_fake("muonext::muon_apply_")
    def _muon_apply_fake(params, updates, lrs, weight_decays, scales):
        return None

    @torch.library.register_fake("muonext::pack")
    def _pack_fake(tensors, offsets, lengths, dtype):
        device = tensors[0].device if tensors else torch.device("cpu")
        return torch.empty(sum(lengths), dtype=dtype, device=device)

    @torch.library.register_fake("muonext::unpack_")
    def _unpack_fake(flat, outs, offsets, lengths):
        return None

    @torch.library.register_fake("muonext::skinny_linear")
    def _skinny_linear_fake(x, weight):
        return x.new_empty(*x.shape[:-1], weight.shape[0])

    @torch.library.register_fake("muonext::mla_decode_attention")
    def _mla_decode_attention_fake(q_nope, q_rope, cache, kv_b_weight, mask, scale):
        H = q_nope.shape[1]
        return q_nope.new_empty(q_nope.shape[0], kv_b_weight.shape[0] - H * q_nope.shape[2])

    @torch.library.register_fake("muonext::rms_norm_rows")
    def _rms_norm_rows_fake(x, weight, eps):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("muonext::logsumexp_argmax")
    def _logsumexp_argmax_fake(logits):
        B = logits.shape[0]
        return logits.new_empty(B), logits.new_empty(B, dtype=torch.long)

    @torch.library.register_fake("muonext::grouped_skinny_linear")
    def _grouped_skinny_linear_fake(x, weight, counts):
        return x.new_empty(x.shape[0], weight.shape[1])
