"""QK-clip: the recorded per-head max logits against a float64 computation of every score, and the
rescaling against its definition — after a clip the clipped heads' logits are γ times what they were
(max exactly τ) and every other logit is bit-for-bit unchanged. Moonlight's MLA (q_proj and q_lora),
transformers' Llama (multi-head, grouped-query; sdpa and eager) and DeepSeek-V3 attention.
"""

from __future__ import annotations

import math

import pytest
import torch

from muonext.models import MoonlightConfig, MoonlightForCausalLM
from muonext.models import max_logits as max_logits_mod
from muonext.models.max_logits import max_logits_per_head
from muonext.models.rope import apply_rope
from muonext.optim import QKClip

TAU_RTOL = 1e-5  # fp32 rounding of √γ·√γ and of the recomputed scores


def _naive_max(q, k, scale, mask=None, causal=False):
    """Every score in float64, then the max per head (the oracle)."""
    H, K = q.shape[1], k.shape[1]
    kk = k.double().repeat_interleave(H // K, dim=1)
    s = torch.einsum("bhtd,bhsd->bhts", q.double(), kk) * scale
    if causal:
        T, S = s.shape[-2:]
        s = s.masked_fill(torch.ones(T, S, dtype=torch.bool).tril().logical_not(), -math.inf)
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else s + mask.double()
    return s.amax(dim=(0, 2, 3))


@pytest.mark.parametrize("block", [1 << 22, 7])  # one block, and many (7 score elements per block)
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (3, 1)])
def test_max_logits_per_head_equals_every_score_in_float64(monkeypatch, block, heads, kv_heads):
    monkeypatch.setattr(max_logits_mod, "BLOCK_ELEMENTS", block)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, heads, 9, 8, generator=g)
    k = torch.randn(2, kv_heads, 9, 8, generator=g)
    bool_mask = torch.rand(2, 1, 9, 9, generator=g) > 0.4
    bool_mask |= torch.eye(9, dtype=torch.bool)
    float_mask = torch.zeros(2, 1, 9, 9).masked_fill(~bool_mask, torch.finfo(torch.float32).min)
    for mask, causal in [(None, True), (None, False), (bool_mask, False), (float_mask, False)]:
        got = max_logits_per_head(q, k, 0.3, mask, causal)
        want = _naive_max(q, k, 0.3, mask, causal)
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    # a key in the future of the queries that would see it large must not count under the causal mask
    q1, k1 = torch.tensor([[[[1.0, 1], [1, 1], [0, 0]]]]), torch.tensor([[[[1.0, 0], [1, 0], [100, 0]]]])
    assert float(max_logits_per_head(q1, k1, 1.0, None, True)) == 1.0


# --------------------------------------------------------------------------------------------- MLA
@torch.no_grad()
def _direct_mla_logits(attn, x, cos, sin, mask=None):
    """(B, H, T, T) float64 scores of one Moonlight attention, computed from its weights head by head:
    q_nope·k_nope (k_nope from kv_b_proj's rows) + q_rope·k_rope (one rotary key shared by the heads)."""
    a = {n: p.double() for n, p in attn.named_parameters()}
    x = x.double()
    B, T, _ = x.shape
    H, Qn, R = attn.num_heads, attn.qk_nope_head_dim, attn.qk_rope_head_dim

    def rms(v, w):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    if attn.q_lora_rank is None:
        q = x @ a["q_proj.weight"].T
    else:
        q = rms(x @ a["q_a_proj.weight"].T, a["q_a_layernorm.weight"]) @ a["q_b_proj.weight"].T
    q = q.view(B, T, H, Qn + R)
    q_nope = q[..., :Qn]
    q_rope = apply_rope(
        q[..., Qn:], cos.double().unsqueeze(2), sin.double().unsqueeze(2), attn.rope_interleave
    )
    ckv = x @ a["kv_a_proj_with_mqa.weight"].T
    c, k_rope = ckv[..., : attn.kv_lora_rank], ckv[..., attn.kv_lora_rank :]
    k_rope = apply_rope(k_rope, cos.double(), sin.double(), attn.rope_interleave)
    kv = (rms(c, a["kv_a_layernorm.weight"]) @ a["kv_b_proj.weight"].T).view(B, T, H, -1)
    k_nope = kv[..., :Qn]
    s = torch.einsum("bthd,bshd->bhts", q_nope, k_nope) + torch.einsum("bthd,bsd->bhts", q_rope, k_rope)
    s = s * attn.scaling
    allowed = torch.ones(T, T, dtype=torch.bool).tril() if mask is None else mask
    return s.masked_fill(~allowed, -math.inf)


def _capture_attention_inputs(model):
    """forward pre-hooks: each attention's (x, cos, sin, mask) of the last forward."""
    seen = {}

    def hook(name):
        def fn(module, args):
            seen[name] = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args[:4])

        return fn

    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            m.register_forward_pre_hook(hook(name))
    return seen


@pytest.mark.parametrize("q_lora_rank", [32, None])
def test_mla_clip_scales_exactly_the_heads_over_tau(q_lora_rank):
    torch.manual_seed(0)
    model = MoonlightForCausalLM(
        MoonlightConfig.preset("debug", q_lora_rank=q_lora_rank, num_attention_heads=4, num_key_value_heads=4)
    )
    with torch.no_grad():  # spread the heads: some far above τ, some under
        for layer in model.model.layers:
            q = layer.self_attn.q_proj if q_lora_rank is None else layer.self_attn.q_b_proj
            q.weight.view(4, -1, q.weight.shape[1]).mul_(torch.tensor([30.0, 1.0, 12.0, 0.5]).view(4, 1, 1))
    inputs = _capture_attention_inputs(model)
    ids = torch.randint(0, 512, (3, 20), generator=torch.Generator().manual_seed(1))
    clip = QKClip(model, threshold=1.0)
    model.train()
    model(ids)
    before = {n: _direct_mla_logits(dict(model.named_modules())[n], *inputs[n]) for n in inputs}
    recorded = {n: m.logit_recorder.value.clone() for n, m, _ in clip.layers}
    kv_a = {n: m.kv_a_proj_with_mqa.weight.clone() for n, m, _ in clip.layers}
    n_clipped = clip.step()

    total = 0
    for name, s_old in before.items():
        s_max = s_old.amax(dim=(0, 2, 3))
        torch.testing.assert_close(recorded[name].double(), s_max, rtol=1e-5, atol=1e-6)
        attn = dict(model.named_modules())[name]
        s_new = _direct_mla_logits(attn, *inputs[name])
        over = s_max > 1.0
        assert over.any() and not over.all(), s_max  # the test covers both kinds of head
        total += int(over.sum())
        for h in range(4):
            if over[h]:  # every score scales by γ: the max becomes τ
                torch.testing.assert_close(s_new[:, h], s_old[:, h] / s_max[h], rtol=TAU_RTOL, atol=1e-7)
                assert float(s_new[:, h].max()) == pytest.approx(1.0, rel=TAU_RTOL)
            else:
                assert torch.equal(s_new[:, h], s_old[:, h])
        assert torch.equal(attn.kv_a_proj_with_mqa.weight, kv_a[name])  # the shared rotary key is untouched
    assert n_clipped == total == sum(clip.clipped.values())
    assert set(clip.layer_max()) == set(before)


def test_mla_nope_and_rope_rows_take_sqrt_gamma_and_gamma():
    torch.manual_seed(0)
    model = MoonlightForCausalLM(MoonlightConfig.preset("debug", q_lora_rank=None))
    attn = model.model.layers[0].self_attn
    q0, kv0 = attn.q_proj.weight.clone(), attn.kv_b_proj.weight.clone()
    gamma = torch.tensor([0.25, 1.0])
    QKClip(model).layers[0][2].rescale(attn, gamma)
    Qn, R, V = attn.qk_nope_head_dim, attn.qk_rope_head_dim, attn.v_head_dim
    q, kv = attn.q_proj.weight.view(2, Qn + R, -1), attn.kv_b_proj.weight.view(2, Qn + V, -1)
    q0, kv0 = q0.view_as(q), kv0.view_as(kv)
    torch.testing.assert_close(q[0, :Qn], q0[0, :Qn] * 0.5)  # q_nope by √γ
    torch.testing.assert_close(q[0, Qn:], q0[0, Qn:] * 0.25)  # q_rope by γ
    torch.testing.assert_close(kv[0, :Qn], kv0[0, :Qn] * 0.5)  # k_nope by √γ
    assert torch.equal(kv[0, Qn:], kv0[0, Qn:])  # values untouched
    assert torch.equal(q[1], q0[1]) and torch.equal(kv[1], kv0[1])  # γ = 1: untouched


def test_recording_is_off_without_a_clip_and_in_eval_mode():
    torch.manual_seed(0)
    model = MoonlightForCausalLM(MoonlightConfig.preset("debug"))
    ids = torch.randint(0, 512, (2, 8))
    assert all(m.logit_recorder is None for m in model.modules() if hasattr(m, "logit_recorder"))
    clip = QKClip(model, threshold=math.inf)
    model.eval()
    model(ids)
    assert clip.step() == 0 and clip.max_logits == {}  # nothing recorded in eval mode
    model.train()
    model(ids)
    before = {n: p.clone() for n, p in model.named_parameters()}
    assert clip.step() == 0 and len(clip.max_logits) == 2  # math.inf records, never clips
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    clip.remove()
    assert all(m.logit_recorder is None for _, m, _ in clip.layers)
    with pytest.raises(RuntimeError, match="remove"):
        clip.step()


def test_micro_batches_accumulate_and_step_resets():
    torch.manual_seed(0)
    model = MoonlightForCausalLM(MoonlightConfig.preset("debug")).train()
    clip = QKClip(model, threshold=math.inf)
    a, b = torch.randint(0, 512, (2, 12)), torch.randint(0, 512, (2, 12))
    model(a)
    clip.step()
    only_a = dict(clip.max_logits)
    model(b)
    clip.step()
    only_b = dict(clip.max_logits)
    model(a)
    model(b)
    clip.step()
    for n, a_max in only_a.items():
        assert torch.equal(clip.max_logits[n], torch.maximum(a_max, only_b[n]))


def test_bad_arguments_are_refused():
    model = MoonlightForCausalLM(MoonlightConfig.preset("debug"))
    for bad in (0, -1.0, float("nan"), "100", True):
        with pytest.raises(ValueError, match="threshold"):
            QKClip(model, threshold=bad)
    with pytest.raises(ValueError, match="no attention module"):
        QKClip(torch.nn.Sequential(torch.nn.Linear(4, 4)))


# ------------------------------------------------------------------------------------ transformers
def _llama(heads, kv_heads, impl, **extra):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        attn_implementation=impl,
        **extra,
    )
    return LlamaForCausalLM(cfg)


@torch.no_grad()
def _direct_llama_logits(attn, hidden, cos, sin, mask_pad):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    B, T, _ = hidden.shape
    d = attn.head_dim
    h = hidden.double()
    q = (h @ attn.q_proj.weight.double().T).view(B, T, -1, d).transpose(1, 2)
    k = (h @ attn.k_proj.weight.double().T).view(B, T, -1, d).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos.double(), sin.double())
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    s = torch.einsum("bhtd,bhsd->bhts", q, k) * attn.scaling
    allowed = torch.ones(T, T, dtype=torch.bool).tril() & mask_pad[:, None, None, :].bool()
    return s.masked_fill(~allowed, -math.inf)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_transformers_llama_clip(impl, heads, kv_heads):
    model = _llama(heads, kv_heads, impl)
    with torch.no_grad():
        for layer in model.model.layers:
            w = layer.self_attn.q_proj.weight
            w.view(heads, -1, w.shape[1]).mul_(torch.tensor([40.0, 0.3, 15.0, 1.0]).view(heads, 1, 1))
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(1))
    pad = torch.ones(2, 10, dtype=torch.long)
    pad[1, :3] = 0  # left padding: the mask path, not is_causal
    plain_logits = model(ids, attention_mask=pad).logits
    seen = {}
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.register_forward_pre_hook(
            lambda m, args, kwargs, i=i: seen.__setitem__(
                i, (kwargs["hidden_states"].detach(), *kwargs["position_embeddings"])
            ),
            with_kwargs=True,
        )
    clip = QKClip(model)
    model.train()
    recorded_logits = model(ids, attention_mask=pad).logits
    torch.testing.assert_close(recorded_logits, plain_logits, rtol=0, atol=0)  # recording changes nothing
    k_before = [layer.self_attn.k_proj.weight.clone() for layer in model.model.layers]
    attns = [layer.self_attn for layer in model.model.layers]
    s_old = [_direct_llama_logits(a, *seen[i], pad) for i, a in enumerate(attns)]
    recorded = [m.logit_recorder.value.clone() for _, m, _ in clip.layers]
    tau = clip.threshold = float(torch.cat(recorded).median())  # between the spread heads of each layer
    clip.step()
    for i, attn in enumerate(attns):
        s_max = s_old[i].amax(dim=(0, 2, 3))
        torch.testing.assert_close(recorded[i].double(), s_max, rtol=1e-5, atol=1e-6)
        s_new = _direct_llama_logits(attn, *seen[i], pad)
        over = s_max > tau
        assert over.any() and not over.all()
        for h in range(heads):
            if over[h]:
                assert float(s_new[:, h].max()) == pytest.approx(tau, rel=TAU_RTOL)
            else:
                assert torch.equal(s_new[:, h], s_old[i][:, h])
        if kv_heads < heads:  # shared keys are never scaled
            assert torch.equal(attn.k_proj.weight, k_before[i])
    clip.remove()
    assert model.config._attn_implementation == impl


def test_transformers_deepseek_v3_uses_the_mla_rule():
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    torch.manual_seed(0)
    cfg = DeepseekV3Config(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=1,
        kv_lora_rank=16,
        q_lora_rank=None,
        qk_nope_head_dim=8,
        qk_rope_head_dim=4,
        v_head_dim=8,
        attn_implementation="sdpa",
    )
    model = DeepseekV3ForCausalLM(cfg).train()
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.mul_(20.0)
    clip = QKClip(model, threshold=0.5)
    assert [type(h).__name__ for _, _, h in clip.layers] == ["MLAHeads"]
    ids = torch.randint(0, 97, (2, 12))
    model(ids)
    first = clip.layers[0][1].logit_recorder.value.clone()
    assert clip.step() == int((first > 0.5).sum()) > 0
    model(ids)  # the same batch again: the clipped heads now peak at τ
    again = clip.layers[0][1].logit_recorder.value
    for h in range(2):
        want = 0.5 if first[h] > 0.5 else float(first[h])
        assert float(again[h]) == pytest.approx(want, rel=TAU_RTOL)


def test_qk_norm_attention_is_refused():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
    )
    with pytest.raises(ValueError, match="q_norm"):
        QKClip(Qwen3ForCausalLM(cfg))


def test_bf16_autocast_clip_on_each_device(device):
    """Training under bf16 autocast: q and k arrive in bf16, the maxima are taken in fp32 and the clip
    brings the clipped heads to τ within bf16 rounding of q and k (2^-8 each)."""
    torch.manual_seed(0)
    model = MoonlightForCausalLM(MoonlightConfig.preset("debug")).to(device).train()
    with torch.no_grad():
        for layer in model.model.layers:
            w = layer.self_attn.q_b_proj.weight
            w.view(2, -1, w.shape[1]).mul_(torch.tensor([40.0, 0.2], device=device).view(2, 1, 1))
    clip = QKClip(model, threshold=0.5)
    ids = torch.randint(0, 512, (2, 16), device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        model(ids)
    first = {n: m.logit_recorder.value.clone() for n, m, _ in clip.layers}
    assert all(v.dtype == torch.float32 and v.device.type == device.type for v in first.values())
    assert clip.step() == 2  # head 0 of both layers
    with torch.autocast(device.type, dtype=torch.bfloat16):
        model(ids)
    for name, m, _ in clip.layers:
        again = m.logit_recorder.value
        assert float(again[0]) == pytest.approx(0.5, rel=2e-2)
        assert float(again[1]) == pytest.approx(float(first[name][1]), rel=2e-2)
