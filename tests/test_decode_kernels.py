"""The fused CPU decode kernels (MLA decode attention, RMSNorm rows, logsumexp/argmax) against float64
references we did not fuse, their argument checks, and greedy decoding with all decode kernels against
the plain ATen path of the same model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from muonext import ops, reference
from muonext.models import MoonlightConfig, MoonlightForCausalLM, generate

fast = pytest.mark.skipif(not ops.cpu_fast_kernels(), reason="no extension or a CPU without AVX-512F")


def _attention_inputs(B=3, H=4, Qn=8, R=6, r=20, V=5, S=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    q_nope, q_rope = torch.randn(B, H, Qn, generator=g), torch.randn(B, H, R, generator=g)
    cache = torch.randn(B, S + 7, r + R, generator=g)[:, :S]  # a slice of a longer cache, as in decoding
    w = torch.randn(H * (Qn + V), r, generator=g) / r**0.5
    mask = torch.zeros(B, S)
    mask[1, :5] = float("-inf")  # left padding of sequence 1
    return q_nope, q_rope, cache, w, mask


@fast
@pytest.mark.parametrize("S", [1, 16, 37])
@pytest.mark.parametrize("H", [1, 4, 12, 40])  # the dot-product scores (≤ 4 heads), one and two broadcast passes
def test_mla_decode_attention_matches_float64(S, H):
    q_nope, q_rope, cache, w, mask = _attention_inputs(H=H, S=S)
    if S == 1:
        mask = torch.zeros(3, 1)
    out = ops.mla_decode_attention(q_nope, q_rope, cache, w, mask, 0.3)
    ref = reference.mla_decode_attention_ref(
        q_nope.double(), q_rope.double(), cache.double(), w.double(), mask.double(), 0.3
    )
    assert out.shape == (3, H * 5) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@fast
def test_mla_decode_attention_bad_arguments():
    q_nope, q_rope, cache, w, mask = _attention_inputs()
    with pytest.raises(TypeError, match="cache must be float32"):
        ops.mla_decode_attention(q_nope, q_rope, cache.double(), w, mask, 1.0)
    with pytest.raises(ValueError, match=r"mask must be \(3, 37\)"):
        ops.mla_decode_attention(q_nope, q_rope, cache, w, mask[:, :5], 1.0)
    with pytest.raises(ValueError, match="kv_b_weight must be"):
        ops.mla_decode_attention(q_nope, q_rope, cache, w[:, :7], mask, 1.0)
    with pytest.raises(ValueError, match="q_rope must be"):
        ops.mla_decode_attention(q_nope, q_rope[:2], cache, w, mask, 1.0)


@fast
@pytest.mark.parametrize("shape", [(1, 7), (5, 64), (2, 3, 300)])
def test_rms_norm_rows_matches_float64(shape):
    x, w = torch.randn(shape) * 3, torch.randn(shape[-1])
    ref = F.rms_norm(x.double(), (shape[-1],), w.double(), 1e-6)
    torch.testing.assert_close(ops.rms_norm_rows(x, w, 1e-6).double(), ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="weight must be 1-D with x's last dimension"):
        ops.rms_norm_rows(x, w[:-1], 1e-6)


@fast
def test_logsumexp_argmax_matches_torch_with_ties_infinities_and_nan():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 8193, generator=g) * 4  # V not a multiple of 16
    logits[1, 100] = logits[1, 5000] = 50.0  # a tie: the first index wins, as torch.argmax
    logits[2] = float("-inf")
    logits[2, 8192] = 1.0  # the maximum in the tail lanes
    logits[3] = float("-inf")  # all −inf: (−inf, 0)
    logits[4, 7] = float("nan")
    logits[5, 9] = float("inf")
    lse, arg = ops.logsumexp_argmax(logits)
    assert arg.dtype == torch.long
    assert arg.tolist() == [int(logits[0].argmax()), 100, 8192, 0, 7, 9]
    ref = torch.logsumexp(logits.double(), -1)
    torch.testing.assert_close(lse[:3].double(), ref[:3], rtol=1e-6, atol=1e-6)
    assert lse[3] == float("-inf") and torch.isnan(lse[4]) and lse[5] == float("inf")
    with pytest.raises(ValueError, match=r"logits must be \(B, V\)"):
        ops.logsumexp_argmax(logits[0])


@fast
def test_opcheck():
    q_nope, q_rope, cache, w, mask = _attention_inputs()
    torch.library.opcheck(torch.ops.muonext.mla_decode_attention.default, (q_nope, q_rope, cache, w, mask, 0.5))
    torch.library.opcheck(torch.ops.muonext.rms_norm_rows.default, (torch.randn(3, 4, 40), torch.randn(40), 1e-5))
    torch.library.opcheck(torch.ops.muonext.logsumexp_argmax.default, (torch.randn(3, 40),))


@fast
def test_decode_with_and_without_the_cpu_kernels(monkeypatch):
    """Greedy decoding with the CPU decode kernels (skinny GEMMs, fused MLA attention, RMSNorm rows,
    logsumexp/argmax) against the same model on the plain ATen path: the fp32 logits of every step agree
    to summation-order rounding, the tokens are equal, and each kernel really ran."""
    torch.manual_seed(0)
    model = MoonlightForCausalLM(MoonlightConfig.preset("debug")).eval()
    prompts = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11]]
    calls = {name: 0 for name in ("skinny_linear", "grouped_skinny_linear", "mla_decode_attention",
                                  "rms_norm_rows", "logsumexp_argmax")}
    for name in calls:
        original = getattr(ops, name)

        def counted(*a, _name=name, _original=original):
            calls[_name] += 1
            return _original(*a)

        monkeypatch.setattr(ops, name, counted)

    def run():
        logits = []
        hook = model.lm_head.register_forward_hook(lambda m, i, o: logits.append(o.clone()))
        tokens = generate(model, prompts, 6, temperature=0.0).tokens
        hook.remove()
        return tokens, logits

    fast_tokens, fast_logits = run()
    assert all(n > 0 for n in calls.values()), calls
    monkeypatch.setattr(ops, "CPU_FAST_KERNELS", False)
    plain_tokens, plain_logits = run()
    assert fast_tokens == plain_tokens
    assert len(fast_logits) == len(plain_logits) == 6
    for a, b in zip(fast_logits, plain_logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
