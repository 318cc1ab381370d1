"""muonext.models against transformers' DeepseekV3ForCausalLM (4.57.6, eager attention, fp32): logits,
loss, checkpoint round trips both ways, key checking, and the one routing difference we keep on purpose."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

from muonext.models import MoonlightConfig, MoonlightForCausalLM, from_pretrained, save_pretrained
from muonext.models.hf import from_hf_state_dict, to_hf_state_dict

BASE = {
    "vocab_size": 97,
    "hidden_size": 32,
    "intermediate_size": 48,
    "moe_intermediate_size": 16,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "n_shared_experts": 1,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "kv_lora_rank": 16,
    "q_lora_rank": None,
    "qk_nope_head_dim": 8,
    "qk_rope_head_dim": 4,
    "v_head_dim": 6,
    "n_group": 1,
    "topk_group": 1,
    "first_k_dense_replace": 1,
    "max_position_embeddings": 64,
    "rope_theta": 10000.0,
    "routed_scaling_factor": 2.446,
}
YARN = {
    "type": "yarn",
    "factor": 4.0,
    "original_max_position_embeddings": 16,
    "mscale": 1.0,
    "mscale_all_dim": 0.8,
    "beta_fast": 32,
    "beta_slow": 1,
}
CASES = {
    "plain": {},
    "q_lora": {"q_lora_rank": 12},
    "groups": {"n_group": 4, "topk_group": 2, "num_experts_per_tok": 3},
    "dense2": {"first_k_dense_replace": 2, "n_shared_experts": 2},
    "yarn": {"rope_scaling": YARN},
    "all": {
        "q_lora_rank": 12,
        "n_group": 2,
        "topk_group": 1,
        "first_k_dense_replace": 2,
        "rope_scaling": YARN,
    },
}


def hf_model(seed=0, bias_std=0.1, **overrides):
    """A transformers model with every weight random (norms around 1, router bias non-zero)."""
    torch.manual_seed(seed)
    cfg = DeepseekV3Config(**{**BASE, **overrides})
    cfg._attn_implementation = "eager"
    model = DeepseekV3ForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(
                1 + 0.2 * torch.randn(p.shape, generator=g)
                if "norm" in name
                else 0.2 * torch.randn(p.shape, generator=g)
            )
        for name, b in model.named_buffers():
            if "e_score_correction_bias" in name:
                b.copy_(bias_std * torch.randn(b.shape, generator=g))
    return model


def ours_from(hf) -> MoonlightForCausalLM:
    model = MoonlightForCausalLM(MoonlightConfig.from_hf_config(hf.config.to_dict())).eval()
    model.load_state_dict(from_hf_state_dict(model, dict(hf.state_dict())))
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_loss_match_transformers(case):
    hf = hf_model(**CASES[case])
    ours = ours_from(hf)
    ids = torch.randint(0, BASE["vocab_size"], (3, 21), generator=torch.Generator().manual_seed(7))
    labels = ids.clone()
    labels[0, :5] = -100
    with torch.no_grad():
        a, b = hf(ids, labels=labels), ours(ids, labels=labels)
    err = (a.logits - b.logits).abs().max().item()
    assert err <= 1e-4, f"{case=} {err=}"
    assert abs(a.loss.item() - b.loss.item()) <= 1e-5, f"{case=} {a.loss=} {b.loss=}"


def test_right_padding_matches_transformers_on_real_tokens():
    hf = hf_model(**CASES["q_lora"])
    ours = ours_from(hf)
    ids = torch.randint(0, BASE["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        a, b = hf(ids, attention_mask=mask).logits, ours(ids, attention_mask=mask).logits
    real = mask.bool()
    err = (a[real] - b[real]).abs().max().item()
    assert err <= 1e-4, f"{err=}"


def test_our_checkpoint_loads_in_transformers(tmp_path):
    hf = hf_model(**CASES["all"])
    ours = ours_from(hf)
    names = save_pretrained(ours, tmp_path, max_shard_bytes=40_000)
    assert len(names) > 1, names
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(names)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "deepseek_v3"
    loaded, info = DeepseekV3ForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids = torch.randint(0, BASE["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        err = (loaded.eval()(ids).logits - hf(ids).logits).abs().max().item()
    assert err <= 1e-5, f"{err=}"


def test_transformers_checkpoint_loads_in_ours(tmp_path):
    hf = hf_model(**CASES["groups"])
    hf.save_pretrained(tmp_path)  # a single model.safetensors, transformers' own config.json
    ours = from_pretrained(tmp_path).eval()
    ids = torch.randint(0, BASE["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        err = (ours(ids).logits - hf(ids).logits).abs().max().item()
    assert err <= 1e-4, f"{err=}"
    bias = ours.model.layers[1].mlp.gate.e_score_correction_bias
    assert bias.dtype == torch.float32 and bias.abs().sum() > 0


def test_round_trip_is_exact_and_bf16_keeps_fp32_router_bias(tmp_path):
    model = MoonlightForCausalLM(MoonlightConfig.preset("debug"))
    with torch.no_grad():
        for moe in model.moe_layers():
            moe.gate.e_score_correction_bias.normal_(0, 0.1)
    save_pretrained(model, tmp_path / "fp32")
    back = from_pretrained(tmp_path / "fp32")
    for (k, a), (k2, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    save_pretrained(model, tmp_path / "bf16", dtype=torch.bfloat16)
    half = from_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    assert half.lm_head.weight.dtype == torch.bfloat16
    bias = half.model.layers[1].mlp.gate.e_score_correction_bias
    assert bias.dtype == torch.float32
    assert torch.equal(bias, model.model.layers[1].mlp.gate.e_score_correction_bias)


def test_missing_and_unknown_keys_are_listed():
    model = MoonlightForCausalLM(MoonlightConfig.preset("debug"))
    sd = dict(to_hf_state_dict(model))
    sd.pop("model.layers.1.mlp.experts.3.up_proj.weight")
    sd.pop("model.norm.weight")
    sd["model.layers.1.mlp.experts.9.up_proj.weight"] = torch.zeros(1)
    sd["model.mtp.weight"] = torch.zeros(1)
    sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(1)  # tolerated: a stale buffer
    with pytest.raises(KeyError) as err:
        from_hf_state_dict(model, sd)
    msg = str(err.value)
    for key in (
        "model.layers.1.mlp.experts.3.up_proj.weight",
        "model.norm.weight",
        "model.layers.1.mlp.experts.9.up_proj.weight",
        "model.mtp.weight",
    ):
        assert key in msg, msg
    assert "inv_freq" not in msg


def test_group_limited_routing_differs_from_transformers_only_on_its_zero_fill():
    """transformers (and the DeepSeek/Moonlight remote code) exclude experts of non-selected groups by
    setting their biased score to 0.0; DeepSeek-V3's reference inference code uses −inf, as we do. The two
    agree whenever biased scores are positive (the tests above); with strongly negative biases
    transformers can pick an expert from an excluded group, we never do."""
    hf = hf_model(**CASES["groups"])
    ours = ours_from(hf)
    router_hf, router = hf.model.layers[1].mlp.gate, ours.model.layers[1].mlp.gate
    with torch.no_grad():
        router_hf.e_score_correction_bias.fill_(-2.0)
        router.e_score_correction_bias.fill_(-2.0)
    x = torch.randn(64, BASE["hidden_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        idx_hf, _ = router_hf(x)
        r = router(x)
    per = BASE["n_routed_experts"] // 4
    biased = (r.scores_NE - 2.0).view(64, 4, per)
    top_groups = biased.topk(2, dim=-1).values.sum(-1).topk(2, dim=-1).indices  # (N, topk_group)
    allowed = torch.zeros(64, 4, dtype=torch.bool).scatter_(1, top_groups, True)
    ours_ok = allowed.gather(1, r.idx_NK // per).all()
    hf_outside = (~allowed.gather(1, idx_hf // per)).any(dim=1)
    assert ours_ok
    assert hf_outside.float().mean() > 0.5, hf_outside  # the quirk: 0.0 beats every negative allowed score


def test_tied_embeddings_round_trip(tmp_path):
    model = MoonlightForCausalLM(MoonlightConfig.preset("debug", tie_word_embeddings=True)).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    save_pretrained(model, tmp_path)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert "lm_head.weight" not in index["weight_map"]
    ids = torch.randint(0, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))
    back = from_pretrained(tmp_path).eval()
    hf = DeepseekV3ForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = model(ids).logits
        assert (back(ids).logits - ref).abs().max() == 0
        assert (hf(ids).logits - ref).abs().max() <= 1e-5
