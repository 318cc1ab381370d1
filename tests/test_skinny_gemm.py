"""The skinny GEMM ops (decode-step linears and routed experts) against float64 and F.linear, their
argument checks, and when the model uses them (only without autograd). The model-level check of all the
decode kernels together is in test_decode_kernels.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from muonext import ops, reference
from muonext.models.layers import SKINNY_MAX_ROWS, linear, use_skinny

needs_kernel = pytest.mark.skipif(not ops.has_kernel("skinny_linear", "cpu"), reason="extension not built")


def _close_fp32(y: torch.Tensor, ref64: torch.Tensor, K: int) -> None:
    # fp32 sums of K products of unit-size numbers: error ~ sqrt(K)·2^-24·|terms|; 1e-5·sqrt(K) is ample
    torch.testing.assert_close(y.double(), ref64, rtol=1e-5, atol=1e-5 * max(K, 1) ** 0.5)


@pytest.mark.parametrize("rows", [1, 5, 16, 17, 32, 33, 70])
@pytest.mark.parametrize("N,K", [(1, 1), (7, 3), (64, 16), (65, 17), (300, 256)])
def test_skinny_linear_matches_float64(rows, N, K):
    g = torch.Generator().manual_seed(rows * 1000 + N + K)
    x, w = torch.randn(rows, K, generator=g), torch.randn(N, K, generator=g)
    y = ops.skinny_linear(x, w)
    assert y.shape == (rows, N) and y.dtype == torch.float32
    _close_fp32(y, x.double() @ w.double().t(), K)


def test_skinny_linear_leading_dims_strided_inputs_and_empty():
    x = torch.randn(4, 9, 2)[..., 0].t()  # (9, 4) non-contiguous
    w = torch.randn(4, 6).t()  # (6, 4) non-contiguous
    _close_fp32(ops.skinny_linear(x.reshape(3, 3, 4), w), (x.double() @ w.double().t()).view(3, 3, 6), 4)
    assert ops.skinny_linear(torch.randn(0, 4), w).shape == (0, 6)
    assert torch.equal(ops.skinny_linear(torch.randn(2, 0), torch.randn(5, 0)), torch.zeros(2, 5))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_skinny_linear_other_dtypes_equal_f_linear(dtype):
    x, w = torch.randn(5, 8, dtype=dtype), torch.randn(3, 8, dtype=dtype)
    torch.testing.assert_close(ops.skinny_linear(x, w), F.linear(x, w))


def test_grouped_skinny_linear_matches_float64():
    g = torch.Generator().manual_seed(3)
    counts = torch.tensor([0, 5, 40, 0, 1, 16, 17, 0])  # empty groups, one > 32 rows (two passes)
    x = torch.randn(int(counts.sum()), 24, generator=g)
    W = torch.randn(8, 33, 24, generator=g)
    ref = reference.grouped_skinny_linear_ref(x.double(), W.double(), counts)
    _close_fp32(ops.grouped_skinny_linear(x, W, counts), ref, 24)
    _close_fp32(ops.grouped_skinny_linear(x, W, counts.int()), ref, 24)
    assert ops.grouped_skinny_linear(x[:0], W, torch.zeros(8, dtype=torch.long)).shape == (0, 33)


@needs_kernel
def test_bad_arguments_name_the_argument():
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    with pytest.raises(TypeError, match="weight must have x's dtype"):
        ops.skinny_linear(x, w.double())
    with pytest.raises(ValueError, match="x's last dimension must be weight's 8"):
        ops.skinny_linear(torch.randn(4, 7), w)
    with pytest.raises(ValueError, match="weight must be 2-D"):
        ops.skinny_linear(x, w[None])
    W = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="counts sum to 5 but x has 4 rows"):
        ops.grouped_skinny_linear(x, W, torch.tensor([2, 3]))
    with pytest.raises(ValueError, match=r"counts\[0\] is negative"):
        ops.grouped_skinny_linear(x, W, torch.tensor([-1, 5]))
    with pytest.raises(ValueError, match=r"counts must have shape \[2\]"):
        ops.grouped_skinny_linear(x, W, torch.tensor([4]))
    with pytest.raises(TypeError, match="counts must be an integer tensor"):
        ops.grouped_skinny_linear(x, W, torch.tensor([2.0, 2.0]))
    with pytest.raises(ValueError, match="x must be 2-D"):
        ops.grouped_skinny_linear(x[None], W, torch.tensor([2, 2]))


@needs_kernel
def test_opcheck():
    torch.library.opcheck(torch.ops.muonext.skinny_linear.default, (torch.randn(2, 5, 8), torch.randn(3, 8)))
    torch.library.opcheck(
        torch.ops.muonext.grouped_skinny_linear.default, (torch.randn(6, 8), torch.randn(3, 4, 8), torch.tensor([1, 0, 5]))
    )


def test_linear_uses_the_kernel_only_without_autograd():
    w = torch.nn.Parameter(torch.randn(3, 8))
    x = torch.randn(4, 8)
    assert not use_skinny(x, w, 4)  # grad mode and a parameter: F.linear, so backward works
    linear(x, w).sum().backward()
    assert w.grad is not None
    with torch.inference_mode():
        assert use_skinny(x, w, 4) == ops.cpu_fast_kernels()
        assert not use_skinny(x, w, SKINNY_MAX_ROWS + 1)
        assert not use_skinny(x.double(), w.double(), 4)
