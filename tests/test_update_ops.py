"""muon_momentum_, muon_apply_, pack and unpack_: kernels against the references (pack bitwise)."""

import pytest
import torch

from muonext import ops, reference

SHAPES = [(1,), (7,), (97, 131), (3, 5, 7), (70001,)]  # includes a size past one parallel chunk
DTYPES = [torch.float32, torch.bfloat16, torch.float64]


def _tensors(shapes, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype).to(device) for s in shapes]


def _tol(dtype):
    return {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float64: 1e-12}[dtype]


@pytest.mark.parametrize("state_dtype", DTYPES)
@pytest.mark.parametrize("grad_dtype", DTYPES)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("nesterov", [True, False])
def test_momentum_matches_reference(device, state_dtype, grad_dtype, out_dtype, nesterov):
    bufs = _tensors(SHAPES, state_dtype, device, 0)
    grads = _tensors(SHAPES, grad_dtype, device, 1)
    ref_bufs = [b.clone() for b in bufs]
    grads_before = [g.clone() for g in grads]
    outs = [torch.empty(s, dtype=out_dtype, device=device) for s in SHAPES]
    ref_outs = [torch.empty(s, dtype=out_dtype, device=device) for s in SHAPES]
    ops.muon_momentum_(bufs, grads, outs, 0.95, nesterov)
    reference.muon_momentum_ref(ref_bufs, grads, ref_outs, 0.95, nesterov)
    for i, (b, rb, o, ro) in enumerate(zip(bufs, ref_bufs, outs, ref_outs)):
        assert o.dtype == out_dtype and o.shape == b.shape
        torch.testing.assert_close(b, rb, rtol=_tol(state_dtype), atol=_tol(state_dtype), msg=f"buf {i}")
        tol = max(_tol(out_dtype), _tol(state_dtype))
        torch.testing.assert_close(o, ro, rtol=tol, atol=tol, msg=f"out {i}")
    assert all(torch.equal(g, gb) for g, gb in zip(grads, grads_before)), "grads must not be modified"


def test_momentum_formula_in_float64():
    buf, grad = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5, 0.25], dtype=torch.float64)
    out = torch.empty_like(buf)
    ops.muon_momentum_([buf], [grad], [out], 0.9, True)
    m = torch.tensor([0.9 * 1.0 + 0.5, 0.9 * -2.0 + 0.25], dtype=torch.float64)
    assert torch.equal(buf, m)
    assert torch.allclose(out, grad + 0.9 * m, rtol=0, atol=1e-15)


@pytest.mark.parametrize("param_dtype", DTYPES)
@pytest.mark.parametrize("update_dtype", [torch.bfloat16, torch.float32])
def test_apply_matches_reference(device, param_dtype, update_dtype):
    params = _tensors(SHAPES, param_dtype, device, 2)
    updates = _tensors(SHAPES, update_dtype, device, 3)
    ref_params = [p.clone() for p in params]
    lrs = [0.01 * (i + 1) for i in range(len(SHAPES))]
    wds = [0.1, 0.0, 0.2, 0.1, 0.05]
    scales = [1.0, 0.5, 2.3, 1.7, 0.2]
    ops.muon_apply_(params, updates, lrs, wds, scales)
    reference.muon_apply_ref(ref_params, updates, lrs, wds, scales)
    for i, (p, rp) in enumerate(zip(params, ref_params)):
        torch.testing.assert_close(p, rp, rtol=_tol(param_dtype), atol=_tol(param_dtype), msg=f"param {i}")


def test_apply_formula_and_strided_param():
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    p = base.clone().mT  # strided view (4, 3)
    u = torch.ones(4, 3)
    ops.muon_apply_([p], [u], [0.1], [0.5], [2.0])
    expected = base.mT * (1 - 0.1 * 0.5) - 0.1 * 2.0
    torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("src_dtype", DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pack_unpack_bitwise(device, src_dtype, dtype):
    tensors = _tensors([(5, 7), (13,), (2, 3, 4)], src_dtype, device, 4)
    tensors[0] = tensors[0].mT  # a strided source packs in row-major order of its logical shape
    offsets, lengths = [3, 0, 5], [20, 13, 10]
    flat = ops.pack(tensors, dtype, offsets, lengths)
    expected = torch.cat([t.reshape(-1)[o : o + n].to(dtype) for t, o, n in zip(tensors, offsets, lengths)])
    assert flat.dtype == dtype and torch.equal(flat, expected)
    outs = [torch.zeros(t.shape, dtype=src_dtype, device=device) for t in tensors]
    ops.unpack_(flat, outs, offsets, lengths)
    start = 0
    for out, o, n in zip(outs, offsets, lengths):
        assert torch.equal(out.reshape(-1)[o : o + n], expected[start : start + n].to(src_dtype))
        assert torch.count_nonzero(out.reshape(-1)[:o]) == 0 and torch.count_nonzero(out.reshape(-1)[o + n :]) == 0
        start += n


def test_pack_whole_tensors_round_trip():
    tensors = _tensors([(4, 4), (9,)], torch.float32, "cpu", 5)
    flat = ops.pack(tensors, torch.float32)
    outs = [torch.empty_like(t) for t in tensors]
    ops.unpack_(flat, outs)
    assert all(torch.equal(a, b) for a, b in zip(outs, tensors))
    assert ops.pack([], torch.bfloat16).shape == (0,)


@pytest.mark.skipif(not ops.has_kernel("muon_momentum_", "cpu"), reason="extension not built")
def test_errors_name_the_argument():
    a, b = torch.zeros(3, 4), torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"grads\[0\] has shape \[4, 3\] but bufs\[0\] has shape \[3, 4\]"):
        ops.muon_momentum_([a], [b], [a.clone()], 0.9, True)
    with pytest.raises(ValueError, match="same length"):
        ops.muon_momentum_([a, a], [a], [a, a], 0.9, True)
    with pytest.raises(TypeError, match=r"grads\[0\] must be float32"):
        ops.muon_momentum_([a], [a.half()], [a.clone()], 0.9, True)
    with pytest.raises(TypeError, match=r"outs\[0\] must be float32"):
        ops.muon_momentum_([a], [a], [a.half()], 0.9, True)
    with pytest.raises(TypeError, match=r"bufs\[0\] must be real"):
        z = torch.zeros(2)
        ops.muon_momentum_([torch.zeros(2, dtype=torch.complex64)], [z], [z.clone()], 0.9, True)
    with pytest.raises(ValueError, match="lrs"):
        ops.muon_apply_([a], [a], [0.1, 0.2], [0.0], [1.0])
    with pytest.raises(ValueError, match=r"scales\[0\] must be finite"):
        ops.muon_apply_([a], [a], [0.1], [0.0], [float("inf")])
    with pytest.raises(ValueError, match=r"offsets\[0\]=10, lengths\[0\]=5 does not fit in tensors\[0\]"):
        ops.pack([a], torch.float32, [10], [5])
    with pytest.raises(ValueError, match="flat must be 1-D with 12 elements"):
        ops.unpack_(torch.zeros(11), [a])


@pytest.mark.skipif(not ops.has_kernel("muon_momentum_", "cpu"), reason="extension not built")
def test_opcheck():
    bufs = [torch.randn(5, 6), torch.randn(7)]
    grads = [torch.randn(5, 6), torch.randn(7)]
    outs = [torch.empty(5, 6, dtype=torch.bfloat16), torch.empty(7)]
    torch.library.opcheck(torch.ops.muonext.muon_momentum_.default, (bufs, grads, outs, 0.9, True))
    params = [torch.randn(5, 6), torch.randn(7).double()]
    upd = [torch.randn(5, 6).bfloat16(), torch.randn(7)]
    torch.library.opcheck(torch.ops.muonext.muon_apply_.default, (params, upd, [0.1, 0.2], [0.1, 0.0], [1.0, 2.0]))
    torch.library.opcheck(torch.ops.muonext.pack.default, (grads, [0, 2], [30, 5], torch.bfloat16))
    flat = torch.randn(35)
    torch.library.opcheck(torch.ops.muonext.unpack_.default, (flat, [torch.zeros(5, 6), torch.zeros(7)], [0, 2], [30, 5]))
