"""newton_schulz: the reference against float64 SVD math, the kernel against the reference."""

import pytest
import torch

from muonext import ops, reference
from muonext.optim.coefficients import KELLER, POLAR_EXPRESS, ns_schedule, singular_value_map

from .helpers import rel_err

KELLER5 = ns_schedule("keller", 5)
FLAT_KELLER5 = ops.flatten_coefficients(KELLER5)

SHAPES = [(1, 33), (33, 1), (64, 64), (97, 131), (131, 97), (200, 48), (1, 7, 5), (7, 97, 131), (7, 40, 23)]


def _polar_with_map(x64: torch.Tensor, schedule) -> torch.Tensor:
    """U · diag(f(σ)) · Vᵀ from a float64 SVD, f = the schedule's scalar map of normalised σ."""
    u, s, vh = torch.linalg.svd(x64, full_matrices=False)
    norm = x64.norm(dim=(-2, -1), keepdim=True).squeeze(-1)
    mapped = torch.tensor([[singular_value_map(schedule, float(v)) for v in row] for row in (s / norm)],
                          dtype=torch.float64)
    return u @ torch.diag_embed(mapped) @ vh


@pytest.mark.parametrize("shape", [(5, 9), (9, 5), (3, 16, 16), (2, 40, 23)])
@pytest.mark.parametrize("schedule_name", ["keller", "polar_express"])
def test_reference_float64_acts_on_singular_values_exactly(shape, schedule_name):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    schedule = ns_schedule(schedule_name, 5)
    out = reference.newton_schulz_ref(x, ops.flatten_coefficients(schedule), 0.0)
    x3 = x if x.dim() == 3 else x.unsqueeze(0)
    expected = _polar_with_map(x3, schedule).reshape(out.shape)
    err = rel_err(out, expected)
    assert err < 1e-10, f"{shape=} {schedule_name=} {err=}"


@pytest.mark.parametrize("schedule_name,low,high", [("keller", 0.68, 1.2), ("polar_express", 0.85, 1.15)])
def test_singular_values_stay_in_the_band_of_the_coefficients(schedule_name, low, high):
    # Well-conditioned input (σ_min/σ_max = 1/10): every output singular value lies in the band that the
    # scalar map gives over the normalised interval, and polar express lands close to U·Vᵀ.
    torch.manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(48, 48, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(80, 48, dtype=torch.float64))
    s = torch.linspace(0.1, 1.0, 48, dtype=torch.float64)
    x = u @ torch.diag(s) @ v.T
    schedule = ns_schedule(schedule_name, 5)
    out = reference.newton_schulz_ref(x, ops.flatten_coefficients(schedule), 0.0)
    sv = torch.linalg.svdvals(out)
    grid = torch.linspace(float(s[0] / x.norm()), float(s[-1] / x.norm()), 2001).tolist()
    mapped = [singular_value_map(schedule, g) for g in grid]
    band = (min(mapped), max(mapped))
    assert band[0] > low and band[1] < high, f"{schedule_name=} {band=}"
    assert sv.min() >= band[0] - 1e-9 and sv.max() <= band[1] + 1e-9, f"{schedule_name=} {band=} {sv=}"
    polar = u @ v.T
    if schedule_name == "polar_express":
        assert rel_err(out, polar) < 0.1, f"{rel_err(out, polar)=}"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_op_matches_reference(device, shape, dtype):
    torch.manual_seed(2)
    x = torch.randn(shape, device=device).to(dtype)
    out = ops.newton_schulz(x, KELLER5)
    assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()
    exact = reference.newton_schulz_ref(x.double(), FLAT_KELLER5, 1e-7)
    ref_same_precision = reference.newton_schulz_ref(x, FLAT_KELLER5, 1e-7)
    # Tolerance follows precision: the kernel may be at most 2x (+ a floor) as far from the float64 result
    # as the plain PyTorch reference run in the same dtype.
    ref_err = rel_err(ref_same_precision, exact)
    err = rel_err(out, exact)
    floor = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    assert err <= 2 * ref_err + floor, f"{shape=} {dtype=} {err=} {ref_err=}"


def test_op_batch_equals_per_matrix_calls():
    torch.manual_seed(3)
    x = torch.randn(7, 40, 23)
    batched = ops.newton_schulz(x, KELLER5)
    single = torch.stack([ops.newton_schulz(m, KELLER5) for m in x])
    assert rel_err(batched, single) < 1e-6


def test_op_non_contiguous_input_and_zero_matrix():
    torch.manual_seed(4)
    x = torch.randn(3, 50, 30).mT  # (3, 30, 50), strided
    assert rel_err(ops.newton_schulz(x, KELLER5), ops.newton_schulz(x.contiguous(), KELLER5)) < 1e-6
    zero = torch.zeros(2, 8, 5)
    out = ops.newton_schulz(zero, KELLER5)
    assert torch.equal(out, zero)
    assert ops.newton_schulz(torch.zeros(0, 4, 4), KELLER5).shape == (0, 4, 4)


def test_op_errors_name_the_argument():
    with pytest.raises(ValueError, match="X must be 2-D"):
        ops.newton_schulz(torch.randn(4), KELLER5)
    with pytest.raises(TypeError, match="X must be float32"):
        ops.newton_schulz(torch.randn(4, 4).half(), KELLER5)
    with pytest.raises(ValueError, match="coefficients"):
        ops.newton_schulz(torch.randn(4, 4), [1.0, 2.0])
    with pytest.raises(ValueError, match="coefficients"):
        ops.newton_schulz(torch.randn(4, 4), [(1.0, float("nan"), 2.0)])
    with pytest.raises(ValueError, match="eps"):
        ops.newton_schulz(torch.randn(4, 4), KELLER5, eps=-1.0)


@pytest.mark.skipif(not ops.has_kernel("newton_schulz", "cpu"), reason="extension not built")
def test_opcheck():
    x = torch.randn(3, 9, 17)
    torch.library.opcheck(torch.ops.muonext.newton_schulz.default, (x, FLAT_KELLER5, 1e-7))
    torch.library.opcheck(torch.ops.muonext.newton_schulz.default, (torch.randn(17, 9).bfloat16(), FLAT_KELLER5, 1e-7))


def test_named_schedules():
    assert ns_schedule("keller", 3) == [KELLER] * 3
    assert ns_schedule("polar_express", 5) == list(POLAR_EXPRESS)
    assert ns_schedule("polar_express", 7)[5:] == [POLAR_EXPRESS[-1]] * 2
    assert ns_schedule([(1.0, 2.0, 3.0)], 4) == [(1.0, 2.0, 3.0)] * 4
    # the 2% safety factor is folded into the first polar express triple: same map as normalising by 1.02·‖X‖
    raw = (8.156554524902461, -22.48329292557795, 15.878769915207462)
    for sigma in (0.01, 0.3, 1.0):
        s = sigma / 1.02
        assert abs(singular_value_map(POLAR_EXPRESS[:1], sigma) - (raw[0] * s + raw[1] * s**3 + raw[2] * s**5)) < 1e-12
    with pytest.raises(ValueError, match="ns_steps=3"):
        ns_schedule([(1, 2, 3)] * 3, 5)
    with pytest.raises(ValueError, match=r"ns_coefficients\[1\]"):
        ns_schedule([(1, 2, 3), (1, 2)], 2)
    with pytest.raises(ValueError, match="keller"):
        ns_schedule("newton", 5)


def test_grouped_equals_single_calls_and_names_bad_members(device):
    torch.manual_seed(5)
    xs = [torch.randn(s, device=device) for s in [(9, 17), (3, 17, 9), (1, 5), (0, 4, 4), (2, 40, 23)]]
    outs = ops.newton_schulz_grouped(xs, KELLER5)
    assert len(outs) == len(xs)
    for x, out in zip(xs, outs):
        assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()
        assert torch.equal(out, ops.newton_schulz(x, KELLER5))
    assert ops.newton_schulz_grouped([], KELLER5) == []
    with pytest.raises(TypeError, match=r"newton_schulz_grouped: Xs\[1\] has dtype"):
        ops.newton_schulz_grouped([xs[0], xs[1].double()], KELLER5)
    with pytest.raises(ValueError, match=r"Xs\[1\] must be 2-D"):
        ops.newton_schulz_grouped([xs[0], torch.randn(4, device=device)], KELLER5)
    with pytest.raises(TypeError, match=r"Xs\[0\] must be float32"):
        ops.newton_schulz_grouped([xs[0].half()], KELLER5)
    with pytest.raises(ValueError, match="coefficients"):
        ops.newton_schulz_grouped(xs[:1], [1.0, 2.0])


@pytest.mark.skipif(not ops.has_kernel("newton_schulz_grouped", "cpu"), reason="extension not built")
def test_grouped_opcheck():
    xs = [torch.randn(3, 9, 17), torch.randn(17, 9)]
    torch.library.opcheck(torch.ops.muonext.newton_schulz_grouped.default, (xs, FLAT_KELLER5, 1e-7))
    xs = [x.bfloat16() for x in xs]
    torch.library.opcheck(torch.ops.muonext.newton_schulz_grouped.default, (xs, FLAT_KELLER5, 1e-7))


@pytest.mark.skipif(not ops.HAS_EXT, reason="extension not built")
def test_ns_backend_setting_is_validated_and_restored():
    from muonext._extension import _C

    before = _C.ns_backend()
    with ops.ns_backend("sm80"):
        assert _C.ns_backend() == "sm80"
    assert _C.ns_backend() == before
    with pytest.raises(ValueError, match="ns_backend must be auto, sm80 or sm90"):
        with ops.ns_backend("sm70"):
            pass
    assert _C.ns_backend() == before
