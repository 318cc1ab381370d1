"""The CPU pipeline end to end on a tiny budget: metrics fields, plots, skipped stages, exact RL resume."""

import json

import pytest
import torch

from muonext.rl.config import PipelineConfig
from muonext.rl.pipeline import REQUIRED, STAGES, Pipeline

TIMING = {"rollout_tokens_per_s", "reward_seconds"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**rl):
    return PipelineConfig.preset(
        "debug", n_train=64, n_eval_per_difficulty=4, sft_steps=6, sft_batch=8, short_sft_steps=3,
        dpo_prompts=4, dpo_samples=2, dpo_steps=2, l2s_iterations=1,
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
    stages = ("sft", "rl")
    full, cut = tmp_path / "full", tmp_path / "cut"
    Pipeline(_cfg(iterations=4), full, progress=False).run(stages)
    out = Pipeline(_cfg(iterations=4), cut, progress=False, stop_after_rl_iteration=2).run(stages)
    assert out == {"interrupted": "rl"}
    assert [r["iteration"] for r in _rl_records(cut)] == [0, 1]
    Pipeline(_cfg(iterations=4), cut, progress=False).run(stages)
    a, b = _rl_records(full), _rl_records(cut)
    assert [r["iteration"] for r in b] == [0, 1, 2, 3]
    assert a == b
    ma = Pipeline(_cfg(iterations=4), full, progress=False).load("rl").state_dict()
    mb = Pipeline(_cfg(iterations=4), cut, progress=False).load("rl").state_dict()
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
