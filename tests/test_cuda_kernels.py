"""CUDA kernels against their references (marker `cuda`; skipped without a GPU).

Newton–Schulz: error vs float64 at most 2x the plain PyTorch error in the same dtype (+ a floor), odd
shapes, big batches, groups of different shapes, on each bf16 backend (sm80 everywhere; sm90 on compute
capability 9.0 with a build that has the sm_90a kernels); the multi-tensor ops: non-contiguous and unaligned tensors, pack/unpack bitwise;
everything also on a side stream and under CUDA graph capture.
"""

import pytest
import torch

import muonext
from muonext import ops, reference
from muonext.optim.coefficients import ns_schedule

from .helpers import rel_err

pytestmark = pytest.mark.cuda

KELLER5 = ops.flatten_coefficients(ns_schedule("keller", 5))
POLAR5 = ops.flatten_coefficients(ns_schedule("polar_express", 5))
FLOOR = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float64: 1e-12}


@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if not ops.has_kernel("newton_schulz", "cuda"):
        pytest.skip("the extension has no CUDA kernels (CPU-only build)")
    return torch.device("cuda")


@pytest.fixture(params=["sm80", "sm90"])
def backend(request, cuda):
    """Runs the test with the bf16 Newton–Schulz on each backend the GPU and the build support."""
    if request.param == "sm90":
        if torch.cuda.get_device_capability() != (9, 0):
            pytest.skip("the sm90 backend needs a compute capability 9.0 GPU")
        if not muonext.BUILD_INFO.get("sm90_kernels"):
            pytest.skip("built without sm_90a kernels")
    with ops.ns_backend(request.param):
        yield request.param


def _check_ns(x, coeffs=KELLER5, eps=1e-7):
    out = ops.newton_schulz(x, coeffs, eps)
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous() and out.device == x.device
    exact = reference.newton_schulz_ref(x.double(), coeffs, eps)
    ref_err = rel_err(reference.newton_schulz_ref(x, coeffs, eps), exact)
    err = rel_err(out, exact)
    assert err <= 2 * ref_err + FLOOR[x.dtype], f"{tuple(x.shape)=} {x.dtype=} {err=} {ref_err=}"
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape",
    [(1, 7), (7, 1), (1, 300), (300, 1), (97, 131), (131, 97), (128, 128), (129, 257), (64, 256, 256), (3, 200, 48)],
)
def test_ns_matches_float64(cuda, backend, shape, dtype):
    if backend == "sm90" and dtype != torch.bfloat16:
        pytest.skip("the sm90 backend only changes bf16")
    torch.manual_seed(0)
    _check_ns(torch.randn(shape, device=cuda).to(dtype))


@pytest.mark.parametrize("shape", [(1408, 2048), (2048, 1408), (4, 576, 2048)])
def test_ns_large_shapes_bf16(cuda, backend, shape):
    torch.manual_seed(1)
    _check_ns(torch.randn(shape, device=cuda, dtype=torch.bfloat16))


def test_ns_expert_batch_and_schedules(cuda, backend):
    torch.manual_seed(2)
    x = torch.randn(64, 1408, 2048, device=cuda, dtype=torch.bfloat16) * 1e-3
    _check_ns(x[:8], POLAR5)
    out = ops.newton_schulz(x, KELLER5)
    single = torch.stack([ops.newton_schulz(x[i], KELLER5) for i in (0, 31, 63)])
    assert rel_err(out[[0, 31, 63]], single) < 1e-6  # batch entries are independent of each other


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_ns_step_counts_and_buffers(cuda, backend, steps):
    torch.manual_seed(3)
    for shape in [(40, 64), (64, 40), (40, 61)]:  # aliased input (wide, aligned), tall, unaligned rows
        _check_ns(torch.randn(shape, device=cuda, dtype=torch.bfloat16), KELLER5[: 3 * steps])


def test_ns_non_contiguous_offset_zero_and_empty(cuda, backend):
    torch.manual_seed(4)
    base = torch.randn(3, 50, 31, device=cuda)
    x = base.mT  # (3, 31, 50), strided
    assert rel_err(ops.newton_schulz(x, KELLER5), ops.newton_schulz(x.contiguous(), KELLER5)) < 1e-6
    flat = torch.randn(1 + 40 * 64, device=cuda, dtype=torch.bfloat16)
    shifted = flat[1:].view(40, 64)  # storage offset: data_ptr not 16-byte aligned
    _check_ns(shifted)
    zero = torch.zeros(2, 8, 5, device=cuda)
    assert torch.equal(ops.newton_schulz(zero, KELLER5), zero)
    assert ops.newton_schulz(torch.zeros(0, 4, 4, device=cuda), KELLER5).shape == (0, 4, 4)


def test_ns_input_is_not_modified_and_symmetric_products(cuda, backend):
    torch.manual_seed(5)
    x = torch.randn(2, 256, 512, device=cuda, dtype=torch.bfloat16)
    before = x.clone()
    ops.newton_schulz(x, KELLER5)
    assert torch.equal(x, before)
    # one step with (a, b, c) = (0, 1, 0) returns A·X with A = X·Xᵀ/‖X‖²: compare with torch
    out = ops.newton_schulz(x.float(), [0.0, 1.0, 0.0], 0.0)
    xn = x.float() / x.float().norm(dim=(-2, -1), keepdim=True)
    assert rel_err(out, xn @ xn.mT @ xn) < 1e-5


def test_ns_grouped_matches_single_calls(cuda, backend):
    torch.manual_seed(9)
    shapes = [(1408, 2048), (4, 2048, 1408), (3, 97, 131), (131, 97), (64, 256, 256), (1, 300), (0, 5, 5)]
    # more members than one launch table holds (ns::kMaxProblems = 8): several launches per step
    shapes += [(2, 40 + i, 64) for i in range(9)]
    xs = [torch.randn(s, device=cuda, dtype=torch.bfloat16) for s in shapes]
    outs = ops.newton_schulz_grouped(xs, KELLER5)
    for x, out in zip(xs, outs):
        assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()
        if x.numel():
            assert rel_err(out, ops.newton_schulz(x, KELLER5)) < 1e-6, tuple(x.shape)
    for x in xs[:4]:
        _check_ns(x)
    with pytest.raises(TypeError, match=r"Xs\[1\] has dtype"):
        ops.newton_schulz_grouped([xs[0], xs[1].float()], KELLER5)


def test_momentum_apply_pack_non_contiguous_unaligned_mixed(cuda):
    torch.manual_seed(6)
    shapes = [(1,), (7,), (97, 131), (3, 5, 7), (70001,), (16384 * 3 + 5,)]
    dtypes = [torch.float32, torch.bfloat16, torch.float64, torch.bfloat16, torch.float32, torch.bfloat16]

    def unaligned(shape, dtype):
        n = 1
        for s in shape:
            n *= s
        return torch.randn(n + 3, device=cuda).to(dtype)[3:].view(shape)  # data_ptr off 16-byte alignment

    bufs = [unaligned(s, d) for s, d in zip(shapes, dtypes)]
    grads = [torch.randn(s[::-1], device=cuda).mT if len(s) == 2 else torch.randn(s, device=cuda) for s in shapes]
    grads = [g.to(torch.bfloat16) if i % 2 else g for i, g in enumerate(grads)]
    outs = [torch.empty(s, device=cuda, dtype=torch.bfloat16) for s in shapes]
    ref_bufs, ref_outs = [b.clone() for b in bufs], [o.clone() for o in outs]
    ops.muon_momentum_(bufs, grads, outs, 0.95, True)
    reference.muon_momentum_ref(ref_bufs, grads, ref_outs, 0.95, True)
    for i in range(len(shapes)):
        torch.testing.assert_close(bufs[i], ref_bufs[i], rtol=1e-6, atol=1e-6, msg=f"buf {i} {shapes[i]}")
        torch.testing.assert_close(outs[i], ref_outs[i], rtol=1e-2, atol=1e-2, msg=f"out {i} {shapes[i]}")

    params = [unaligned(s, d) for s, d in zip(shapes, dtypes)]
    params[2] = params[2].mT.contiguous().mT  # strided param: written back by the glue
    ref_params = [p.clone() for p in params]
    lrs, wds, scales = [0.02] * len(shapes), [0.1] * len(shapes), [0.5 + i for i in range(len(shapes))]
    ops.muon_apply_(params, outs, lrs, wds, scales)
    reference.muon_apply_ref(ref_params, outs, lrs, wds, scales)
    for i in range(len(shapes)):
        tol = 1e-2 if params[i].dtype == torch.bfloat16 else 1e-6
        torch.testing.assert_close(params[i], ref_params[i], rtol=tol, atol=tol, msg=f"param {i}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_pack_unpack_bitwise_unaligned_ranges(cuda, dtype):
    torch.manual_seed(7)
    srcs = [torch.randn(1000, device=cuda), torch.randn(33, 65, device=cuda).to(torch.bfloat16).mT,
            torch.randn(70001, device=cuda).double(), torch.randn(5, device=cuda)]
    offsets, lengths = [3, 1, 7, 0], [997, 2000, 70000 - 7, 5]  # odd offsets: unaligned heads
    flat = ops.pack(srcs, dtype, offsets, lengths)
    expected = torch.cat([t.reshape(-1)[o : o + n].to(dtype) for t, o, n in zip(srcs, offsets, lengths)])
    assert flat.dtype == dtype and torch.equal(flat, expected)
    outs = [torch.zeros(t.shape, device=cuda, dtype=t.dtype) for t in srcs]
    outs[1] = torch.zeros(33, 65, device=cuda, dtype=torch.bfloat16).mT  # non-contiguous target
    ops.unpack_(flat, outs, offsets, lengths)
    start = 0
    for out, o, n in zip(outs, offsets, lengths):
        assert torch.equal(out.reshape(-1)[o : o + n], expected[start : start + n].to(out.dtype))
        assert torch.count_nonzero(out.reshape(-1)[:o]) == 0 and torch.count_nonzero(out.reshape(-1)[o + n :]) == 0
        start += n
    many = [torch.randn(i + 1, device=cuda) for i in range(150)]  # more than one launch table (64 per launch)
    assert torch.equal(ops.pack(many, torch.bfloat16), torch.cat(many).bfloat16())


def _step(x, bufs, grads, outs, params):
    ops.muon_momentum_(bufs, grads, outs, 0.9, True)
    upd = ops.newton_schulz(x, KELLER5)
    ops.muon_apply_(params, [upd], [0.1], [0.01], [1.5])
    return ops.pack([params[0], bufs[0]], torch.bfloat16)


def test_side_stream_and_cuda_graph(cuda, backend):
    torch.manual_seed(8)
    x = torch.randn(3, 97, 131, device=cuda, dtype=torch.bfloat16)
    bufs, grads = [torch.randn(3, 97, 131, device=cuda)], [torch.randn(3, 97, 131, device=cuda)]
    outs, params = [torch.empty(3, 97, 131, device=cuda, dtype=torch.bfloat16)], [torch.randn(3, 97, 131, device=cuda)]
    state = [t.clone() for t in (bufs[0], outs[0], params[0])]

    def fresh():
        return [bufs[0].copy_(state[0]), outs[0].copy_(state[1]), params[0].copy_(state[2])]

    fresh()
    expected = _step(x, bufs, grads, outs, params).clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fresh()
        got = _step(x, bufs, grads, outs, params)
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(got, expected), "side stream"

    # warm up on a side stream (allocator), then capture and replay
    with torch.cuda.stream(side):
        fresh()
        _step(x, bufs, grads, outs, params)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    fresh()
    with torch.cuda.graph(graph):
        captured = _step(x, bufs, grads, outs, params)
    fresh()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, expected), "graph replay"
