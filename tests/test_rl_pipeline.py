"""The CPU pipeline end to end on a tiny budget: metrics fields, plots, skipped stages, exact RL resume."""

import dataclasses
import json

import pytest
import torch

from muonext.rl.config import PipelineConfig
from muonext.rl.pipeline import REQUIRED, STAGES, Pipeline
from muonext.train.checkpoint import load_checkpoint

TIMING = {"rollout_tokens_per_s", "reward_seconds"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**rl):
    return PipelineConfig.preset(
        "debug", n_train=64, n_eval_per_difficulty=4, sft_steps=6, sft_batch=8, short_sft_steps=3,
        l2s_prompts=4, l2s_samples=2, shortest_sft_steps=2, dpo_steps=2, l2s_iterations=1,
        rl={"iterations": 3, "prompts_per_iter": 2, "samples_per_prompt": 2, "max_new_tokens": 24,
            "segment_tokens": 10, "minibatch": 8, **rl},
    )


def _rl_records(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows if r["stage"] == "rl"]


def test_debug_pipeline_end_to_end(tmp_path):
    summary = Pipeline(_cfg(), tmp_path, progress=False).run()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        missing = [k for k in REQUIRED if k not in r]
        assert not missing, f"{missing=} in {r}"
    assert {r["stage"] for r in rows} >= {"sft", "rl", "short_sft", "dpo", "l2s_rl", "eval"}
    rl = [r for r in rows if r["stage"] == "rl"]
    assert [r["iteration"] for r in rl] == [0, 1, 2]
    for key in ("log_ratio", "entropy", "rollout_tokens_per_s", "replay_buffer"):
        assert all(key in r for r in rl), key
    for stage in STAGES:
        assert (tmp_path / stage / "done.json").exists(), stage
    for png in ("rl.png", "sft_loss.png", "eval.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 1000, png
    assert set(summary["eval"]) >= {"sft", "rl", "merge", "dpo", "l2s_rl"}
    # a rerun skips every finished stage and leaves the metrics as they are
    before = (tmp_path / "metrics.jsonl").read_text()
    Pipeline(_cfg(), tmp_path, progress=False).run()
    assert (tmp_path / "metrics.jsonl").read_text() == before


def test_resumed_rl_stage_continues_identically(tmp_path):
    """With the policy average on: the stage hands on the average, and it survives the resume too."""
    stages = ("sft", "rl")
    full, cut = tmp_path / "full", tmp_path / "cut"
    cfg = _cfg(iterations=4, policy_ema=0.5)
    Pipeline(cfg, full, progress=False).run(stages)
    out = Pipeline(cfg, cut, progress=False, stop_after_rl_iteration=2).run(stages)
    assert out == {"interrupted": "rl"}
    assert [r["iteration"] for r in _rl_records(cut)] == [0, 1]
    Pipeline(cfg, cut, progress=False).run(stages)
    a, b = _rl_records(full), _rl_records(cut)
    assert [r["iteration"] for r in b] == [0, 1, 2, 3]
    assert a == b
    ma = Pipeline(cfg, full, progress=False).load("rl").state_dict()
    mb = Pipeline(cfg, cut, progress=False).load("rl").state_dict()
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    # the average does not change training: a run without it takes the same steps, and its stage model
    # is the last policy θ_4, so the handed-on average is 0.5·(average after iteration 3) + 0.5·θ_4
    plain = tmp_path / "plain"
    Pipeline(_cfg(iterations=4), plain, progress=False).run(stages)
    assert _rl_records(plain) == a
    last = Pipeline(_cfg(iterations=4), plain, progress=False).load("rl").state_dict()
    average_3 = load_checkpoint(full / "rl" / "step_00000003").rank_state(0)["policy_average"]
    for k, v in average_3.items():
        torch.testing.assert_close(ma[k], 0.5 * v + 0.5 * last[k], rtol=0, atol=1e-6, msg=k)
    assert any(not torch.equal(ma[k], last[k]) for k in average_3)


class _Killed(Exception):
    pass


def _kill_at(step, log_first=None):
    def log(s, *rest):
        if log_first is not None:
            log_first(s, *rest)
        if s == step:
            raise _Killed
    return log


def test_sft_and_dpo_killed_mid_stage_resume_identically(tmp_path):
    from muonext.rl.stages import StepCheckpoints, dpo_train, sft_train

    cfg = _cfg()
    p = Pipeline(cfg, tmp_path / "data", progress=False)
    data = [(p.codec.prompt_ids(q.prompt), p.codec.response_ids(q.long_solution)) for q in p.train_set[:40]]
    pairs = [(a, b, b[: max(1, len(b) // 2)]) for a, b in data[:8]]

    def fresh():
        return p.data.new_model(0)

    def run(kill, root):
        model, ref = fresh(), fresh()
        ckpts = StepCheckpoints(root, every=4)
        try:
            sft_train(model, data, 25, 8, 3e-3, 0, p.codec.pad_id, log=_kill_at(kill), checkpoints=ckpts)
        except _Killed:
            model = fresh()
            sft_train(model, data, 25, 8, 3e-3, 0, p.codec.pad_id, checkpoints=ckpts)
        dpo_ckpts = StepCheckpoints(root / "dpo", every=2)
        try:
            dpo_train(model, ref, pairs, 7, 4, 1e-3, 0.1, 0, p.codec.pad_id, log=_kill_at(kill // 4),
                      checkpoints=dpo_ckpts)
        except _Killed:
            model.load_state_dict(fresh().state_dict())  # whatever the process had in memory is lost
            dpo_train(model, ref, pairs, 7, 4, 1e-3, 0.1, 0, p.codec.pad_id, checkpoints=dpo_ckpts)
        return model.state_dict()

    whole = run(kill=-1, root=tmp_path / "whole")
    resumed = run(kill=20, root=tmp_path / "cut")  # SFT dies after step 21 (last checkpoint: 20), DPO after 6
    assert sorted(int(d.name[5:]) for d in (tmp_path / "cut").glob("step_*")) == [20, 24]  # the last two kept
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_pipeline_sft_resumes_from_its_progress_checkpoint(tmp_path, monkeypatch):
    import muonext.rl.pipeline as pl

    cfg = PipelineConfig.preset("debug", n_train=64, n_eval_per_difficulty=4, sft_steps=12, sft_batch=8,
                                stage_checkpoint_every=5)
    real = pl.sft_train
    monkeypatch.setattr(pl, "sft_train", lambda *a, **k: real(*a, **{**k, "log": _kill_at(10, k["log"])}))
    with pytest.raises(_Killed):
        Pipeline(cfg, tmp_path / "cut", progress=False).run(("sft",))
    assert (tmp_path / "cut" / "sft" / "progress" / "step_00000010").is_dir()
    monkeypatch.setattr(pl, "sft_train", real)
    Pipeline(cfg, tmp_path / "cut", progress=False).run(("sft",))
    Pipeline(cfg, tmp_path / "whole", progress=False).run(("sft",))
    assert not (tmp_path / "cut" / "sft" / "progress").exists()
    a = Pipeline(cfg, tmp_path / "whole", progress=False).load("sft").state_dict()
    b = Pipeline(cfg, tmp_path / "cut", progress=False).load("sft").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["iteration"] for r in json.loads("[" + ",".join(
        (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) + "]") if r["stage"] == "sft"]
    assert steps == [0, 10, 11]  # step 10 was logged before the kill and again after: kept once


def test_shortest_sft_trains_on_each_prompts_shortest_correct_sample(tmp_path, monkeypatch):
    cfg = _cfg()
    p = Pipeline(cfg, tmp_path, progress=False)
    p.run(("sft", "rl"))
    probs = p.train_set[: cfg.l2s_prompts]
    enc = p.codec.response_ids
    right = [enc(q.long_solution) for q in probs]
    short_right = [enc(f"Answer: {q.answer}") for q in probs]
    wrong_shorter = enc("Answer: x")
    # prompt 0: shortest correct is the short one; 1: only the long one is correct; 2: none; 3: the two
    samples = [[right[0], short_right[0]], [wrong_shorter, right[1]], [wrong_shorter, wrong_shorter],
               [short_right[3], right[3]]]
    (tmp_path / "long_samples.json").write_text(json.dumps({"samples": samples}))
    seen = {}
    monkeypatch.setattr(Pipeline, "_sft", lambda self, stage, model, data, steps, lr, **info: seen.update(
        stage=stage, data=data, steps=steps, lr=lr, info=info))
    p.stage_shortest_sft()
    assert seen["stage"] == "shortest_sft" and seen["steps"] == cfg.shortest_sft_steps
    assert seen["lr"] == cfg.shortest_sft_lr
    expect = [(p.codec.prompt_ids(probs[i].prompt), r) for i, r in
              ((0, short_right[0]), (1, right[1]), (3, short_right[3]))]
    assert seen["data"] == expect
    assert seen["info"]["kept"] == 3
    # DPO reads the same draw: chosen = shortest correct, rejected = the wrong ones and the much longer
    from muonext.rl.stages import long2short_data

    pairs, shortest = long2short_data(*p._long_samples(), p.codec)
    assert [r for _, r in shortest] == [r for _, r in expect]
    assert (p.codec.prompt_ids(probs[1].prompt), right[1], wrong_shorter) in pairs
    (tmp_path / "long_samples.json").write_text(json.dumps({"samples": samples[:3]}))
    with pytest.raises(ValueError, match="another configuration"):
        p._long_samples()
    (tmp_path / "long_samples.json").write_text(json.dumps({"samples": samples, "temperature": 0.7}))
    with pytest.raises(ValueError, match="found T = 0.7"):
        p._long_samples()


def test_long2short_rl_stage_config(tmp_path, monkeypatch):
    # long2short RL: from the RL model, length reward on from the first iteration, 3/4 of the rollout
    # length, sampled at the long2short temperature, averaged with the long2short decay and stepped at the
    # long2short lr (not the RL ones)
    cfg = dataclasses.replace(_cfg(temperature=0.7, max_new_tokens=40, length_weight=0.0, length_warmup=5,
                                   policy_ema=0.9),
                              l2s_temperature=1.0, l2s_iterations=3, l2s_length_weight=0.25, l2s_policy_ema=0.8,
                              l2s_lr=5e-5)
    seen = {}
    monkeypatch.setattr(Pipeline, "_rl", lambda self, stage, start, rl_cfg: seen.update(
        stage=stage, start=start, rl=rl_cfg))
    Pipeline(cfg, tmp_path, progress=False).stage_l2s_rl()
    rl = seen["rl"]
    assert (seen["stage"], seen["start"]) == ("l2s_rl", "rl")
    assert (rl.temperature, rl.max_new_tokens, rl.iterations) == (1.0, 30, 3)
    assert (rl.length_weight, rl.length_warmup, rl.segment_tokens) == (0.25, 0, 10)
    assert (rl.policy_ema, rl.lr) == (0.8, 5e-5)
    Pipeline(dataclasses.replace(cfg, l2s_lr=0.0), tmp_path, progress=False).stage_l2s_rl()
    assert seen["rl"].lr == cfg.rl.lr  # 0: the RL stage's


def test_evaluate_scores_greedy_and_sampled_responses_per_level(monkeypatch):
    from muonext.rl import stages
    from muonext.rl.tasks import Problem
    from muonext.rl.text_codec import CharCodec

    codec = CharCodec()
    problems = [Problem("What is 1 + 1?", "2", 1), Problem("What is 2 + 2?", "4", 1), Problem("What is 9 + 9?", "18", 2)]
    right = [codec.response_ids(f"Answer: {q.answer}") for q in problems]
    wrong = codec.response_ids("Answer: 7")
    calls = []

    def fake(model, probs, codec_, n, max_new, temperature, generator=None, batch=64):
        calls.append((n, temperature, generator is not None))
        if temperature == 0.0:  # greedy: problem 0 right, 1 wrong, 2 right
            return [[right[0]], [wrong], [right[2]]]
        return [[right[0], wrong, right[0], right[0]], [wrong] * 4, [right[2], wrong, wrong, wrong]]

    monkeypatch.setattr(stages, "sample_responses", fake)
    res = stages.evaluate(None, problems, codec, 32, samples=4, temperature=0.7, seed=3)
    assert calls == [(1, 0.0, False), (4, 0.7, True)]
    assert res["1"]["accuracy"] == 0.5 and res["2"]["accuracy"] == 1.0 and res["all"]["accuracy"] == 2 / 3
    assert res["1"]["sampled_accuracy"] == 3 / 8 and res["2"]["sampled_accuracy"] == 1 / 4
    assert res["all"]["sampled_accuracy"] == 4 / 12
    assert res["1"]["mean_length"] == (len(right[0]) + len(wrong)) / 2
    assert res["1"]["sampled_mean_length"] == (3 * len(right[0]) + 5 * len(wrong)) / 8
    assert "sampled_accuracy" not in stages.evaluate(None, problems, codec, 32)["all"]


def test_pipeline_config_validation_names_the_field():
    for field, bad in (("l2s_lr", -1e-4), ("l2s_policy_ema", 1.0), ("merge_ratio", 1.5), ("difficulties", ())):
        with pytest.raises(ValueError, match=f"PipelineConfig.{field}"):
            PipelineConfig.preset("debug", **{field: bad})


def test_loading_a_stage_trained_with_another_model_names_the_difference(tmp_path):
    Pipeline(_cfg(), tmp_path, progress=False).run(("sft",))
    deeper = dataclasses.replace(_cfg(), model_overrides={"num_hidden_layers": 3})
    with pytest.raises(ValueError, match=r"stage 'sft' was trained with another model.*'num_hidden_layers': \(2, 3\)"):
        Pipeline(deeper, tmp_path, progress=False).load("sft")
    assert Pipeline(_cfg(), tmp_path, progress=False).load("sft").config.num_hidden_layers == 2
