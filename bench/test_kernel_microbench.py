"""Kernel microbenchmarks (pytest-benchmark): `make bench` runs them; `make test` never does.

Each kernel is paired with the plain-PyTorch way of doing the same work, so the report shows both.
"""

import pytest
import torch

from muonext import ops, reference
from muonext.optim import ns_schedule

SCHEDULE = ops.flatten_coefficients(ns_schedule("keller", 5))
NS_SHAPES = {"experts_64x352x512": (64, 352, 512), "attention_768x512": (1, 768, 512), "small_64x64x64": (64, 64, 64)}


@pytest.mark.parametrize("name", list(NS_SHAPES))
@pytest.mark.parametrize("impl", ["muonext", "reference"])
def test_newton_schulz_bf16(benchmark, name, impl):
    x = torch.randn(NS_SHAPES[name]).bfloat16()
    fn = ops.newton_schulz if impl == "muonext" else reference.newton_schulz_ref
    benchmark(fn, x, SCHEDULE, 1e-7)


def _update_tensors(n=64, size=64 * 1024):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(size, generator=g) for _ in range(n)]


@pytest.mark.parametrize("impl", ["muonext", "reference"])
def test_momentum_64_tensors(benchmark, impl):
    bufs, grads = _update_tensors(), _update_tensors()
    outs = [torch.empty_like(b, dtype=torch.bfloat16) for b in bufs]
    fn = ops.muon_momentum_ if impl == "muonext" else reference.muon_momentum_ref
    benchmark(fn, bufs, grads, outs, 0.95, True)


@pytest.mark.parametrize("impl", ["muonext", "reference"])
def test_apply_64_tensors(benchmark, impl):
    params = _update_tensors()
    updates = [u.bfloat16() for u in _update_tensors()]
    n = len(params)
    fn = ops.muon_apply_ if impl == "muonext" else reference.muon_apply_ref
    benchmark(fn, params, updates, [1e-3] * n, [0.1] * n, [2.0] * n)


@pytest.mark.parametrize("impl", ["muonext", "torch.cat"])
def test_pack_64_tensors_to_bf16(benchmark, impl):
    tensors = _update_tensors()
    if impl == "muonext":
        benchmark(ops.pack, tensors, torch.bfloat16)
    else:
        benchmark(lambda: torch.cat([t.reshape(-1) for t in tensors]).bfloat16())
