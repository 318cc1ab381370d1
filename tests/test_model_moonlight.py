"""MoonlightConfig validation and presets, parameter counts, MoE load balancing, aux loss, gradients."""

import math

import pytest
import torch

from muonext.models import MoonlightConfig, MoonlightForCausalLM
from muonext.models.moe import sequence_aux_loss, update_bias


# ---------------------------------------------------------------- config
@pytest.mark.parametrize(
    "field,value",
    [
        ("num_experts_per_tok", 9),  # > n_routed_experts (debug has 4 ... overridden below)
        ("kv_lora_rank", 0),
        ("hidden_size", 0),
        ("hidden_size", -8),
        ("q_lora_rank", 0),
        ("n_group", 3),  # does not divide 4 experts
        ("topk_group", 2),  # > n_group
        ("num_key_value_heads", 1),
        ("first_k_dense_replace", 5),
        ("qk_rope_head_dim", 7),
        ("scoring_func", "softmax"),
        ("topk_method", "greedy"),
        ("num_nextn_predict_layers", 1),
        ("aux_loss_alpha", -0.1),
    ],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        MoonlightConfig.preset("debug", **{field: value})


def test_bad_rope_scaling_and_preset_name():
    with pytest.raises(ValueError, match="rope_scaling"):
        MoonlightConfig.preset("debug", rope_scaling={"type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match="preset"):
        MoonlightConfig.preset("moonlight-3b")


def test_hf_config_round_trip():
    cfg = MoonlightConfig.preset("moonlight-16b-a3b")
    hf = cfg.to_hf_config()
    assert hf["model_type"] == "deepseek_v3" and hf["q_lora_rank"] is None
    assert MoonlightConfig.from_hf_config(hf) == cfg
    with pytest.raises(ValueError, match="model_type"):
        MoonlightConfig.from_hf_config({**hf, "model_type": "llama"})


def test_moonlight_parameter_counts_match_the_paper():
    """Paper: 15.29B non-embedding total, 2.24B activated (embeddings and lm_head excluded)."""
    cfg = MoonlightConfig.preset("moonlight-16b-a3b")
    with torch.device("meta"):
        model = MoonlightForCausalLM(cfg)
    total = model.num_parameters(exclude_embeddings=True) / 1e9
    active = model.num_activated_parameters(exclude_embeddings=True) / 1e9
    assert abs(total - 15.29) <= 0.01, f"{total=}"
    assert abs(active - 2.24) <= 0.01, f"{active=}"
    assert model.num_parameters() - model.num_parameters(True) == 2 * cfg.vocab_size * cfg.hidden_size


@pytest.mark.parametrize("name", ["tiny", "debug"])
def test_small_presets_run(name):
    cfg = MoonlightConfig.preset(name)
    model = MoonlightForCausalLM(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 9))
    out = model(ids, labels=ids)
    assert out.logits.shape == (2, 9, cfg.vocab_size)
    assert abs(out.loss.item() - math.log(cfg.vocab_size)) < 0.5, out.loss  # near uniform at init
    names = [n for n, _ in model.named_parameters()]
    assert "model.embed_tokens.weight" in names and "lm_head.weight" in names
    assert model.model.layers[1].mlp.experts.gate_proj.shape == (
        cfg.n_routed_experts,
        cfg.moe_intermediate_size,
        cfg.hidden_size,
    )
    assert model.model.layers[1].mlp.experts.down_proj.shape == (
        cfg.n_routed_experts,
        cfg.hidden_size,
        cfg.moe_intermediate_size,
    )
    assert "model.layers.1.mlp.gate.e_score_correction_bias" in dict(model.named_buffers())


# ---------------------------------------------------------------- load balancing
def test_bias_update_direction_and_zero_mean():
    bias = torch.zeros(4)
    load = torch.tensor([10.0, 2.0, 2.0, 2.0])  # expert 0 overloaded
    update_bias(bias, load, rate=0.01)
    assert bias[0] < 0 and (bias[1:] > 0).all(), bias
    assert abs(bias.sum().item()) < 1e-7
    # sign(e) = [-1, 1, 1, 1], mean 0.5 -> delta = 0.01 * [-1.5, 0.5, 0.5, 0.5]
    torch.testing.assert_close(bias, torch.tensor([-0.015, 0.005, 0.005, 0.005]))


def test_model_records_loads_and_updates_bias():
    cfg = MoonlightConfig.preset("debug", num_hidden_layers=3)
    model = MoonlightForCausalLM(cfg).train()
    ids = torch.randint(0, cfg.vocab_size, (3, 10))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    model(ids, attention_mask=mask)
    model(ids, attention_mask=mask)
    loads = model.expert_loads()
    assert loads.shape == (2, cfg.n_routed_experts)
    assert (loads.sum(1) == 2 * int(mask.sum()) * cfg.num_experts_per_tok).all(), loads
    stats = model.expert_load_stats()
    assert "moe/maxvio" in stats and "moe/layer1/max_over_mean" in stats
    before = [m.gate.e_score_correction_bias.clone() for m in model.moe_layers()]
    model.update_router_bias(rate=1e-2)
    for b0, moe, load in zip(before, model.moe_layers(), loads):
        delta = moe.gate.e_score_correction_bias - b0
        over = load > load.mean()
        assert (delta[over] < 0).all() and (delta[load < load.mean()] > 0).all(), (load, delta)
    assert model.expert_loads().sum() == 0  # accumulators reset
    model.eval()
    with torch.no_grad():
        model(ids)
    assert model.expert_loads().sum() == 0  # eval forwards do not count
    assert (model.expert_loads(accumulated=False).sum(1) == ids.numel() * cfg.num_experts_per_tok).all()


def test_bias_only_changes_selection_not_weights():
    cfg = MoonlightConfig.preset("debug")
    model = MoonlightForCausalLM(cfg)
    router = model.model.layers[1].mlp.gate
    x = torch.randn(5, cfg.hidden_size)
    with torch.no_grad():
        router.e_score_correction_bias.copy_(torch.tensor([10.0, 10.0, -10.0, -10.0]))
    r = router(x)
    assert set(r.idx_NK.flatten().tolist()) == {0, 1}
    scores = torch.sigmoid(x @ router.weight.T)
    expect = scores[:, :2] / scores[:, :2].sum(-1, keepdim=True) * cfg.routed_scaling_factor
    got = torch.stack([r.weight_NK[i][r.idx_NK[i].argsort()] for i in range(5)])
    torch.testing.assert_close(got, expect)


def test_sequence_aux_loss_matches_hand_computation():
    E, K, alpha = 4, 2, 0.01
    scores = torch.tensor(
        [
            [[0.9, 0.1, 0.5, 0.2], [0.3, 0.8, 0.6, 0.1], [0.4, 0.4, 0.9, 0.7]],
            [[0.2, 0.3, 0.4, 0.5], [0.6, 0.5, 0.4, 0.3], [0.1, 0.1, 0.1, 0.9]],
        ]
    )
    idx = torch.tensor([[[0, 2], [1, 2], [2, 3]], [[3, 2], [0, 1], [3, 0]]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # last token of sequence 2 is padding
    total = 0.0
    for b in range(2):
        T = int(mask[b].sum())
        f = [E / (K * T) * sum(int(i in idx[b, t].tolist()) for t in range(T)) for i in range(E)]
        P = [sum(float(scores[b, t, i] / scores[b, t].sum()) for t in range(T)) / T for i in range(E)]
        total += alpha * sum(fi * pi for fi, pi in zip(f, P))
    got = sequence_aux_loss(scores, idx, mask, alpha)
    assert abs(got.item() - total / 2) < 1e-6, (got, total / 2)


def test_aux_loss_is_added_in_training():
    cfg = MoonlightConfig.preset("debug", aux_loss_alpha=0.01)
    model = MoonlightForCausalLM(cfg).train()
    ids = torch.randint(0, cfg.vocab_size, (2, 8))
    out = model(ids, labels=ids)
    assert out.aux_loss is not None and out.aux_loss.item() > 0
    torch.testing.assert_close(out.loss, out.lm_loss + out.aux_loss)
    out.loss.backward()
    assert model.model.layers[1].mlp.gate.weight.grad.abs().sum() > 0
    model.eval()
    assert model(ids, labels=ids).aux_loss is None


# ---------------------------------------------------------------- gradients
def test_gradients_reach_every_expert_that_got_tokens():
    cfg = MoonlightConfig.preset("debug", num_hidden_layers=3, n_routed_experts=8, num_experts_per_tok=2)
    model = MoonlightForCausalLM(cfg).train()
    ids = torch.randint(0, cfg.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    model(ids, labels=ids).loss.backward()
    for i, moe in zip(model.moe_layer_indices(), model.moe_layers()):
        got = moe.last_load > 0
        assert got.sum() >= 2, (i, moe.last_load)
        for name in ("gate_proj", "up_proj", "down_proj"):
            g = getattr(moe.experts, name).grad
            norms = g.flatten(1).norm(dim=1)
            assert (norms[got] > 0).all(), f"{i=} {name=} {norms=} {moe.last_load=}"
            assert (norms[~got] == 0).all(), f"{i=} {name=} {norms=}"
        assert moe.gate.weight.grad.abs().sum() > 0
        assert moe.shared_experts.gate_proj.weight.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        if "experts." not in name or "shared" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_padding_does_not_change_real_tokens():
    cfg = MoonlightConfig.preset("debug")
    model = MoonlightForCausalLM(cfg).eval()
    ids = torch.randint(1, cfg.vocab_size, (1, 7))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 4)], dim=1).long()
    with torch.no_grad():
        a = model(ids).logits
        b = model(torch.cat([padded, padded]), attention_mask=torch.cat([mask, mask])).logits[:, :7]
    torch.testing.assert_close(b, a.expand_as(b), atol=1e-5, rtol=1e-5)


def test_loop_and_padded_dispatch_agree():
    cfg = MoonlightConfig.preset("debug", n_routed_experts=8, num_experts_per_tok=3)
    model = MoonlightForCausalLM(cfg).double()
    ids = torch.randint(0, cfg.vocab_size, (3, 11), generator=torch.Generator().manual_seed(0))
    results = {}
    for mode in ("loop", "padded"):
        for moe in model.moe_layers():
            moe.experts.dispatch = mode
        model.zero_grad()
        out = model(ids, labels=ids)
        out.loss.backward()
        experts = model.moe_layers()[0].experts
        results[mode] = (out.logits.detach(), experts.gate_proj.grad.clone(), experts.down_proj.grad.clone())
    for a, b in zip(results["loop"], results["padded"]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_debug_model_learns_and_balances():
    """A few AdamW steps on a fixed batch cut the loss; the bias update runs alongside."""
    torch.manual_seed(0)
    cfg = MoonlightConfig.preset("debug")
    model = MoonlightForCausalLM(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, cfg.vocab_size, (4, 32), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(30):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_router_bias(rate=1e-3)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert model.moe_layers()[0].gate.e_score_correction_bias.abs().sum() > 0


def test_bf16_forward_and_generate():
    from muonext.models import generate

    cfg = MoonlightConfig.preset("debug")
    model = MoonlightForCausalLM(cfg).to(torch.bfloat16).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 8))
    out = model(ids, labels=ids)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    r = generate(model, [[1, 2, 3], [4]], 5, temperature=0.0)
    assert r.lengths == [5, 5]
