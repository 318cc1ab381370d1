"""Muon against oracles we did not write: float64 math of the formula, torch.optim.Muon, torch.optim.AdamW."""

import copy
import math

import pytest
import torch

from muonext.optim import Muon, NonFiniteGradientError, muon_param_groups, ns_schedule

from .helpers import rel_err

MIXED_SHAPES = [(32, 48), (48, 32), (64, 64), (4, 24, 40), (3, 40, 24), (16, 3, 3, 3), (1, 17)]


def _grad_sequence(shapes, steps, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes] for _ in range(steps)]


def _ns64(x, schedule, eps):
    """Newton–Schulz in float64 written from the formula (independent of muonext.reference)."""
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / (torch.linalg.matrix_norm(x) + eps)
    for a, b, c in schedule:
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def _muon64(params, grad_seq, *, lr, wd, mu, nesterov, schedule, scale_fn, eps=1e-7):
    """DESIGN.md §2 in float64: sum-form momentum, Nesterov, NS per matrix, decoupled decay, scale s(A, B)."""
    params = [p.clone().double() for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    for grads in grad_seq:
        for i, (p, g) in enumerate(zip(params, grads)):
            g = g.double()
            bufs[i] = mu * bufs[i] + g
            u = g + mu * bufs[i] if nesterov else bufs[i]
            mats = u if u.dim() == 3 else u.reshape(u.shape[0], -1).unsqueeze(0)
            rows, cols = mats.shape[1:]
            o = torch.stack([_ns64(m, schedule, eps) for m in mats]).reshape(p.shape)
            params[i] = p * (1 - lr * wd) - lr * scale_fn(rows, cols) * o
    return params


def _run(opt, params, grad_seq):
    for grads in grad_seq:
        for p, g in zip(params, grads):
            p.grad = g.to(p.dtype).clone()
        opt.step()


SCALES = {
    "match_rms_adamw": lambda a, b: 0.2 * math.sqrt(max(a, b)),
    "original": lambda a, b: math.sqrt(max(1.0, a / b)),
    "spectral": lambda a, b: math.sqrt(a / b),
    "none": lambda a, b: 1.0,
}


@pytest.mark.parametrize("adjust_lr", list(SCALES))
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("coefficients", ["keller", "polar_express"])
def test_matches_float64_formula(adjust_lr, nesterov, coefficients):
    torch.manual_seed(0)
    init = [torch.randn(s, dtype=torch.float64) * 0.1 for s in MIXED_SHAPES]
    grad_seq = _grad_sequence(MIXED_SHAPES, 10, seed=1)
    params = [torch.nn.Parameter(p.clone()) for p in init]
    opt = Muon(params, lr=0.02, weight_decay=0.1, nesterov=nesterov, ns_coefficients=coefficients,
               adjust_lr=adjust_lr, ns_dtype=torch.float64, use_muon=True)
    _run(opt, params, grad_seq)
    expected = _muon64(init, grad_seq, lr=0.02, wd=0.1, mu=0.95, nesterov=nesterov,
                       schedule=ns_schedule(coefficients, 5), scale_fn=SCALES[adjust_lr])
    for shape, p, e in zip(MIXED_SHAPES, params, expected):
        err = rel_err(p.detach(), e)
        assert err < 1e-10, f"{shape=} {adjust_lr=} {nesterov=} {coefficients=} {err=}"


@pytest.mark.parametrize("ns_dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_float32_params_match_float64_formula(ns_dtype, tol):
    torch.manual_seed(0)
    init = [torch.randn(s) * 0.1 for s in MIXED_SHAPES]
    grad_seq = _grad_sequence(MIXED_SHAPES, 10, seed=2, dtype=torch.float32)
    params = [torch.nn.Parameter(p.clone()) for p in init]
    opt = Muon(params, lr=0.02, ns_dtype=ns_dtype, use_muon=True)
    _run(opt, params, grad_seq)
    expected = _muon64(init, grad_seq, lr=0.02, wd=0.1, mu=0.95, nesterov=True,
                       schedule=ns_schedule("keller", 5), scale_fn=SCALES["match_rms_adamw"])
    for shape, p, e in zip(MIXED_SHAPES, params, expected):
        # measure against the distance travelled, not the parameter itself
        err = float((p.detach().double() - e).norm() / (e - init[MIXED_SHAPES.index(shape)].double()).norm())
        assert err < tol, f"{shape=} {ns_dtype=} {err=}"


def test_matches_torch_optim_muon_within_its_own_bf16_noise():
    shapes = [(32, 48), (48, 32), (64, 64), (96, 40)]
    torch.manual_seed(0)
    init = [torch.randn(s) * 0.1 for s in shapes]
    grad_seq = _grad_sequence(shapes, 20, seed=3, dtype=torch.float32)
    ours = [torch.nn.Parameter(p.clone()) for p in init]
    theirs = [torch.nn.Parameter(p.clone()) for p in init]
    _run(Muon(ours, lr=0.02, weight_decay=0.1, ns_dtype=torch.bfloat16, use_muon=True), ours, grad_seq)
    _run(torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw"), theirs, grad_seq)
    exact = _muon64(init, grad_seq, lr=0.02, wd=0.1, mu=0.95, nesterov=True,
                    schedule=ns_schedule("keller", 5), scale_fn=SCALES["match_rms_adamw"])
    for shape, o, t, e, p0 in zip(shapes, ours, theirs, exact, init):
        travelled = (e - p0.double()).norm()
        ours_err = float((o.detach().double() - e).norm() / travelled)
        torch_err = float((t.detach().double() - e).norm() / travelled)
        both = float((o.detach().double() - t.detach().double()).norm() / travelled)
        # measured: ours_err ≈ torch_err ≈ 5e-3, both ≈ 7e-3 (bf16 NS noise on either side)
        assert ours_err <= 2.0 * torch_err + 1e-4, f"{shape=} {ours_err=} {torch_err=}"
        assert both <= 3.0 * torch_err + 1e-4, f"{shape=} {both=} {torch_err=}"


def test_adamw_path_matches_torch_adamw():
    torch.manual_seed(0)
    shapes = [(50, 16), (16,), (1,), (7, 3)]
    init = [torch.randn(s) for s in shapes]
    grad_seq = _grad_sequence(shapes, 20, seed=4, dtype=torch.float32)
    ours = [torch.nn.Parameter(p.clone()) for p in init]
    theirs = [torch.nn.Parameter(p.clone()) for p in init]
    opt = Muon([{"params": ours, "use_muon": False}], lr=3e-3, weight_decay=0.1, adamw_betas=(0.9, 0.95),
               adamw_eps=1e-8)
    _run(opt, ours, grad_seq)
    _run(torch.optim.AdamW(theirs, lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8), theirs, grad_seq)
    for shape, o, t in zip(shapes, ours, theirs):
        torch.testing.assert_close(o, t, rtol=1e-6, atol=1e-7, msg=f"{shape=}")


def test_expert_stack_is_orthogonalised_per_expert():
    torch.manual_seed(0)
    stack = torch.randn(4, 24, 40) * 0.1
    grad_seq = _grad_sequence([(4, 24, 40)], 5, seed=5, dtype=torch.float32)
    p3 = torch.nn.Parameter(stack.clone())
    _run(Muon([p3], lr=0.02, ns_dtype=torch.float32), [p3], grad_seq)
    singles = [torch.nn.Parameter(m.clone()) for m in stack]
    split_seq = [[g[0][e] for e in range(4)] for g in grad_seq]
    _run(Muon(singles, lr=0.02, ns_dtype=torch.float32), singles, split_seq)
    assert rel_err(p3.detach(), torch.stack([s.detach() for s in singles])) < 1e-6


def test_one_grouped_newton_schulz_per_schedule_per_step(monkeypatch):
    import muonext.ops

    calls = []
    real = muonext.ops.newton_schulz_grouped

    def counting(xs, *args, **kwargs):
        calls.append(sorted(tuple(x.shape) for x in xs))
        return real(xs, *args, **kwargs)

    monkeypatch.setattr(muonext.ops, "newton_schulz_grouped", counting)
    params = [torch.nn.Parameter(torch.randn(s)) for s in MIXED_SHAPES]
    groups = [{"params": params[:-1]}, {"params": params[-1:], "ns_coefficients": "polar_express"}]
    _run(Muon(groups, lr=0.02), params, _grad_sequence(MIXED_SHAPES, 2, seed=11, dtype=torch.float32))
    # per step: one call with every shape batch of the keller group, one for the polar-express group
    assert len(calls) == 4, calls
    assert calls[0] == sorted([(1, 32, 48), (1, 48, 32), (1, 64, 64), (4, 24, 40), (3, 40, 24), (1, 16, 27)])
    assert calls[1] == [(1, 1, 17)]


def test_update_rms_is_reported_and_matches_the_scale():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(64, 128))
    b = torch.nn.Parameter(torch.zeros(64))
    opt = Muon([("w", p), ("b", b)], lr=0.01, ns_dtype=torch.float32, ns_coefficients="polar_express")
    p.grad, b.grad = torch.randn(64, 128), torch.randn(64)
    opt.step()
    rms = opt.update_rms
    assert set(rms) == {"w", "b"}
    assert 0.18 < rms["w"] < 0.22, rms  # 0.2·sqrt(128)·RMS(O) with O ≈ orthogonal: ≈ 0.2
    assert 0.9 < rms["b"] <= 1.0 + 1e-6, rms  # first AdamW step: m̂/(√v̂+ε) = ±1


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(20, 16), torch.nn.Linear(16, 32), torch.nn.LayerNorm(32),
                                torch.nn.Linear(32, 20))
    x = torch.randint(0, 20, (4, 9))

    def train(m, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x).reshape(-1, 20), x.reshape(-1)).backward()
            opt.step()

    opt = Muon(muon_param_groups(model), lr=0.01)
    train(model, opt, 3)
    model2 = copy.deepcopy(model)
    opt2 = Muon(muon_param_groups(model2), lr=0.01)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    train(model, opt, 4)
    train(model2, opt2, 4)
    for (n, a), b in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(a, b), n


def test_lr_scheduler_drives_the_learning_rate():
    p = torch.nn.Parameter(torch.randn(8, 8))
    opt = Muon([p], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.0 if step >= 1 else 1.0)
    p.grad = torch.randn(8, 8)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.0
    before = p.detach().clone()
    p.grad = torch.randn(8, 8)
    opt.step()
    assert torch.equal(p.detach(), before)  # lr 0: no update and no decay


def test_grad_untouched_and_none_grads_skipped():
    a, b = torch.nn.Parameter(torch.randn(6, 5)), torch.nn.Parameter(torch.randn(6, 5))
    opt = Muon([a, b], lr=0.1)
    a.grad = torch.randn(6, 5)
    g = a.grad.clone()
    b_before = b.detach().clone()
    opt.step()
    assert torch.equal(a.grad, g)
    assert torch.equal(b.detach(), b_before) and b not in opt.state


def test_routing_by_name_and_module():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = torch.nn.Embedding(10, 8)
            self.proj = torch.nn.Linear(8, 8)
            self.norm = torch.nn.LayerNorm(8)
            self.lm_head = torch.nn.Linear(8, 10, bias=False)
            self.experts = torch.nn.Parameter(torch.randn(4, 8, 8))

    groups = muon_param_groups(Net(), lr=0.1)
    muon = next(g for g in groups if g["use_muon"])
    other = next(g for g in groups if not g["use_muon"])
    assert sorted(muon["param_names"]) == ["experts", "proj.weight"]
    assert sorted(other["param_names"]) == ["lm_head.weight", "norm.bias", "norm.weight", "proj.bias", "tok.weight"]
    assert muon["lr"] == 0.1


def test_nonfinite_gradient_raises_naming_the_parameter_or_skips():
    w = torch.nn.Parameter(torch.randn(4, 4))
    v = torch.nn.Parameter(torch.randn(4))
    opt = Muon([("layer.w", w), ("layer.v", v)], lr=0.1)
    w.grad = torch.randn(4, 4)
    v.grad = torch.tensor([1.0, float("nan"), 0.0, 0.0])
    with pytest.raises(NonFiniteGradientError, match="layer.v"):
        opt.step()
    skipping = Muon([("layer.w", w), ("layer.v", v)], lr=0.1, skip_nonfinite=True)
    before = (w.detach().clone(), v.detach().clone())
    w.grad = torch.full((4, 4), float("inf"))
    skipping.step()
    assert skipping.skipped_steps == 1 and len(skipping.state) == 0
    assert torch.equal(w.detach(), before[0]) and torch.equal(v.detach(), before[1])
    assert skipping.state_dict()["muonext"]["skipped_steps"] == 1


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"lr": -1.0}, ValueError, "lr"),
        ({"lr": float("nan")}, ValueError, "lr"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay"),
        ({"momentum": 1.0}, ValueError, "momentum"),
        ({"nesterov": "yes"}, TypeError, "nesterov"),
        ({"ns_steps": 0}, ValueError, "ns_steps"),
        ({"ns_coefficients": "newton"}, ValueError, "ns_coefficients"),
        ({"ns_coefficients": [(1.0, 2.0)]}, ValueError, r"ns_coefficients\[0\]"),
        ({"adjust_lr": "sqrt"}, ValueError, "adjust_lr"),
        ({"rms_target": 0.0}, ValueError, "rms_target"),
        ({"ns_dtype": torch.float16}, TypeError, "ns_dtype"),
        ({"adamw_betas": (0.9, 1.0)}, ValueError, r"adamw_betas\[1\]"),
        ({"adamw_eps": 0.0}, ValueError, "adamw_eps"),
        ({"use_muon": "auto"}, TypeError, "use_muon"),
    ],
)
def test_invalid_hyperparameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        Muon([torch.nn.Parameter(torch.randn(3, 3))], **kwargs)


def test_invalid_params_and_grads():
    with pytest.raises(TypeError, match="floating point"):
        Muon([torch.nn.Parameter(torch.randn(3, 3, dtype=torch.complex64))])
    with pytest.raises(TypeError, match="float32, bfloat16 or float64"):
        Muon([torch.nn.Parameter(torch.randn(3, 3).half())])
    with pytest.raises(ValueError, match="one device"):
        Muon([torch.nn.Parameter(torch.randn(3, 3)), torch.nn.Parameter(torch.randn(3, 3, device="meta"))])
    p = torch.nn.Parameter(torch.randn(3, 3))
    opt = Muon([("emb", p)])
    p.grad = torch.randn(3, 3).to_sparse()
    with pytest.raises(TypeError, match="sparse gradients.*emb"):
        opt.step()


def test_closure_is_called_with_grad_enabled():
    p = torch.nn.Parameter(torch.randn(4, 4))
    opt = Muon([p], lr=0.01)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() > 0 and p.grad is not None
