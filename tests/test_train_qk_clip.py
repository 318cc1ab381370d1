"""`train_moonlight.py --qk-clip TAU` and `--log-max-logits` on the debug preset: the max logit per layer
and the clipped heads in metrics.jsonl, the plot, recording that changes nothing, bitwise resume."""

import json

import pytest
import torch

from muonext.train import load_checkpoint, parse_config, train

from .test_train_loop import cfg_for, metrics

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tokcache"))


def test_cli_flags():
    cfg = parse_config(["--qk-clip", "100", "--log-max-logits"])
    assert cfg.qk_clip == 100.0 and cfg.log_max_logits


def test_qk_clip_run_logs_clips_plots_and_resumes_exactly(tmp_path, cache):
    # τ under the debug model's initial max logit (about 0.05): the first steps clip
    tau = 0.02
    straight = tmp_path / "straight"
    train(cfg_for(straight, cache, qk_clip=tau, plots=True))
    recs = metrics(straight)
    for r in recs:
        layers = [r[f"attn/max_logit/layer{i}"] for i in range(2)]
        assert r["attn/max_logit"] == max(layers), r
        over = sum(v > tau for v in layers)  # layers with at least one head over τ
        assert over <= r["attn/clipped_heads"] <= 2 * over, r  # 2 heads per layer
    assert recs[0]["attn/clipped_heads"] > 0
    assert (straight / "max_logit.png").stat().st_size > 1000
    assert json.loads((straight / "run.json").read_text())["config"]["qk_clip"] == tau

    split = tmp_path / "split"
    train(cfg_for(split, cache, qk_clip=tau, stop_at=3))
    train(cfg_for(split, cache, qk_clip=tau, resume="auto"))
    for ra, rb in zip(recs, metrics(split), strict=True):
        for key in ("loss", "val_loss", "attn/max_logit", "attn/clipped_heads"):
            assert ra.get(key) == rb.get(key), (ra["step"], key)
    wa = load_checkpoint(straight / "checkpoints" / "step_00000008").model_state()
    wb = load_checkpoint(split / "checkpoints" / "step_00000008").model_state()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_logging_max_logits_does_not_change_training(tmp_path, cache):
    train(cfg_for(tmp_path / "plain", cache))
    train(cfg_for(tmp_path / "logged", cache, log_max_logits=True))
    plain, logged = metrics(tmp_path / "plain"), metrics(tmp_path / "logged")
    assert [r["loss"] for r in plain] == [r["loss"] for r in logged]
    assert all(r["attn/clipped_heads"] == 0 and r["attn/max_logit"] > 0 for r in logged)
    assert all("attn/max_logit" not in r for r in plain)
