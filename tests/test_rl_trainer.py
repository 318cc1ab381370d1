"""The RL trainer: a code task whose program never ends (sandbox timeout in the reward path) does not
stop training; group-whole minibatches; the optimizer reset; the policy's moving average; log π_i from
the rollout."""

import math

import pytest
import torch

from muonext.models import MoonlightConfig, MoonlightForCausalLM
from muonext.rl.config import RLConfig
from muonext.rl.task_adapter import CodeTask, MathTask, RewardResult
from muonext.rl.tasks import generate_problems
from muonext.rl.text_codec import CharCodec
from muonext.rl.trainer import RLTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _model():
    torch.manual_seed(0)
    return MoonlightForCausalLM(MoonlightConfig.preset("debug", vocab_size=CharCodec().vocab_size))


def test_code_task_reward_infinite_loop_is_zero_not_an_exception():
    task = CodeTask("Write f.", "assert f() == 1", prefix="while True:\n    pass\n", timeout_s=0.5)
    res = task.reward("def f():\n    return 1\n")
    assert res.reward == 0.0 and not res.correct and res.error, res
    ok = CodeTask("Write f.", "assert f() == 1", timeout_s=10.0).reward("def f():\n    return 1\n")
    assert ok.correct, ok


def test_trainer_keeps_going_when_the_sandbox_fails():
    tasks = [CodeTask(f"Write f{i}.", "assert f() == 1", prefix="while True:\n    pass\n", timeout_s=0.3)
             for i in range(2)]
    cfg = RLConfig(iterations=2, prompts_per_iter=1, samples_per_prompt=2, max_new_tokens=6,
                   segment_tokens=0, sampling="uniform", grad_steps=1)
    trainer = RLTrainer(_model(), tasks, cfg)
    records = trainer.train(progress=False)
    assert [r["iteration"] for r in records] == [0, 1]
    finished = [r for r in records if r["finished"]]
    assert finished, records
    for r in finished:
        scored = r["finished"] - r["repeat_ended"] - r["truncated"]
        assert r["reward_errors"] == scored, r  # every sandbox run failed and was counted
        assert r["accuracy"] == 0.0


def test_minibatches_keep_groups_whole_and_reset_optimizer():
    tasks = [MathTask(p) for p in generate_problems(16, [1], 0)]
    cfg = RLConfig(iterations=1, prompts_per_iter=3, samples_per_prompt=3, max_new_tokens=8, minibatch=4)
    trainer = RLTrainer(_model(), tasks, cfg)
    from muonext.rl.rollout import Trajectory

    done = [Trajectory(p, f"g{p}", [2], [3], 0, 0, 1, "finished") for p in range(3) for _ in range(3)]
    batches = trainer._minibatches(done, range(9))
    assert sorted(j for b in batches for j in b) == list(range(9))
    for b in batches:
        groups = {done[j].group for j in b}
        assert all(sum(done[j].group == g for j in b) == 3 for g in groups), batches
    # skip_uniform_groups: only the group whose rewards differ (g1) takes gradient
    rewards = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert trainer._trained(done, rewards) == list(range(9))
    trainer.cfg = cfg.replace(skip_uniform_groups=True)
    assert trainer._trained(done, rewards) == [3, 4, 5]
    trainer.cfg = cfg
    first = trainer.optimizer
    trainer.step()
    assert trainer.optimizer is not first  # reset at the start of the iteration
    cfg2 = cfg.replace(reset_optimizer=False)
    t2 = RLTrainer(_model(), tasks, cfg2)
    first = t2.optimizer
    t2.step()
    assert t2.optimizer is first


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="partial_grad"):
        RLConfig(partial_grad="some")
    with pytest.raises(ValueError, match="samples_per_prompt"):
        RLConfig(samples_per_prompt=0)
    with pytest.raises(ValueError, match="policy_ema"):
        RLConfig(policy_ema=1.0)
    with pytest.raises(ValueError, match="reference_logprobs"):
        RLConfig(reference_logprobs="cached")


class _ParityTask:
    """Reward 1 for an even-length response: samples of one prompt disagree, so every step moves the weights."""

    difficulty = 1

    def __init__(self, prompt: str) -> None:
        self.prompt = prompt

    def reward(self, response: str) -> RewardResult:
        return RewardResult(float(len(response) % 2 == 0), len(response) % 2 == 0)


def _float_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().double() for k, v in model.state_dict().items() if v.is_floating_point()}


def test_policy_average_is_the_moving_average_of_each_iterations_weights():
    tasks = [_ParityTask(f"{i} + 1 = ?") for i in range(4)]
    # at T = 3 the untrained model's samples end at EOS at various lengths, so their rewards differ
    cfg = RLConfig(iterations=3, prompts_per_iter=2, samples_per_prompt=4, max_new_tokens=24,
                   sampling="uniform", lr=3e-2, temperature=3.0, truncation_reward=0.5, policy_ema=0.6)
    trainer = RLTrainer(_model(), tasks, cfg)
    expected = _float_state(trainer.model)
    for _ in range(3):
        trainer.step()
        expected = {k: 0.6 * v + 0.4 * w for (k, v), w in zip(expected.items(), _float_state(trainer.model).values())}
    averaged, live = trainer.policy_state(), trainer.model.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(averaged[k].double(), v, rtol=0, atol=1e-6, msg=k)
    assert set(averaged) == set(live)
    assert any(not torch.equal(averaged[k], live[k]) for k in expected)  # the weights did move
    plain = RLTrainer(_model(), tasks, cfg.replace(policy_ema=0.0))
    plain.step()
    assert all(torch.equal(v, plain.model.state_dict()[k]) for k, v in plain.policy_state().items())


def test_resume_refuses_a_checkpoint_written_with_another_policy_average(tmp_path):
    tasks = [_ParityTask("1 + 1 = ?")]
    cfg = RLConfig(iterations=1, prompts_per_iter=1, samples_per_prompt=2, max_new_tokens=4, sampling="uniform")
    RLTrainer(_model(), tasks, cfg, ckpt_dir=tmp_path).train(progress=False)
    with pytest.raises(ValueError, match="policy_ema"):
        RLTrainer(_model(), tasks, cfg.replace(policy_ema=0.5), ckpt_dir=tmp_path).resume()


@pytest.mark.parametrize("scoring", ["one", "sampling"])
@pytest.mark.parametrize("partial_grad", ["all", "last_segment"])
def test_reference_logprobs_from_the_rollout_equal_a_forward_pass(partial_grad, scoring):
    # 12-token segments of up to 24 tokens: continued trajectories finish with earlier segments, which
    # "all" scores by a forward pass; T = 3 so that tempered log-probs would not pass for π_i's
    tasks = [_ParityTask(f"{i} + 1 = ?") for i in range(4)]
    cfg = RLConfig(iterations=4, prompts_per_iter=2, samples_per_prompt=4, max_new_tokens=24, segment_tokens=12,
                   sampling="uniform", lr=3e-2, temperature=3.0, truncation_reward=0.5, partial_grad=partial_grad,
                   logprob_temperature=scoring)
    trainer = RLTrainer(_model(), tasks, cfg)
    seen = {"rollout": 0, "continued": 0}
    from_rollout = trainer._reference_logp

    def both(done, trained):
        got = from_rollout(done, trained)
        trainer.cfg = cfg.replace(reference_logprobs="forward")
        expect = from_rollout(done, trained)
        trainer.cfg = cfg
        torch.testing.assert_close(got[trained], expect[trained], rtol=0, atol=1e-4)
        untrained = sorted(set(range(len(done))) - set(trained))
        assert not got[untrained].isfinite().any()
        seen["rollout"] += sum(done[j].segment_start == 0 for j in trained)
        seen["continued"] += sum(done[j].segment_start > 0 for j in trained)
        return got

    trainer._reference_logp = both
    records = trainer.train(progress=False)
    assert seen["rollout"] and seen["continued"], seen
    assert all(r["entropy"] > 0 for r in records)


def test_rollouts_come_from_the_engine_it_is_given():
    """A RolloutEngine is the one seam between the trainer and where samples come from (an inference
    server at scale): an engine that delegates to the local sampler trains exactly as the default one,
    and is told the new weights after each iteration that trained."""
    from muonext.rl.engine import LocalSampler

    tasks = [MathTask(p) for p in generate_problems(8, seed=0, difficulties=[1])]
    cfg = RLConfig(iterations=3, prompts_per_iter=2, samples_per_prompt=2, max_new_tokens=12,
                   sampling="uniform", grad_steps=1)
    plain = RLTrainer(_model(), tasks, cfg).train(progress=False)

    class Remote:
        def __init__(self, model, generator, repeat):
            self.inner, self.updates = LocalSampler(model, CharCodec().eos_id, generator, repeat), 0

        def generate(self, requests, **kw):
            return self.inner.generate(requests, **kw)

        def update_weights(self, model):
            self.updates += 1

    model = _model()
    trainer = RLTrainer(model, tasks, cfg)
    trainer.engine = Remote(model, trainer.generator, trainer.repeat)
    records = trainer.train(progress=False)
    timing = ("rollout_tokens_per_s", "reward_seconds")
    assert [{k: v for k, v in r.items() if k not in timing} for r in records] == \
        [{k: v for k, v in r.items() if k not in timing} for r in plain]
    assert trainer.engine.updates == sum(r["trained"] > 0 for r in records) > 0


def test_sampling_temperature_log_probs_are_those_of_the_distribution_sampled_from():
    """With logprob_temperature="sampling" the recorded log-probs are the sampled distribution's: the
    empirical frequencies of 6000 draws of the first token at T = 0.5 match exp(recorded log-prob)."""
    from muonext.models.generation import generate

    model = _model()
    prompt = CharCodec().prompt_ids("7 + 5 = ?")
    gen = torch.Generator().manual_seed(0)
    res = generate(model, [prompt] * 6000, 1, temperature=0.5, generator=gen, logprob_temperature=0.5)
    firsts = [t[0] for t in res.tokens]
    for token in sorted(set(firsts), key=firsts.count, reverse=True)[:3]:
        p = math.exp(res.logprobs[firsts.index(token)][0])
        freq = firsts.count(token) / len(firsts)
        assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / len(firsts)) + 1e-3, (token, freq, p)
    at_one = generate(model, [prompt], 1, temperature=0.5, generator=torch.Generator().manual_seed(0))
    tempered = generate(model, [prompt], 1, temperature=0.5, generator=torch.Generator().manual_seed(0),
                        logprob_temperature=0.5)
    assert at_one.tokens == tempered.tokens and at_one.logprobs != tempered.logprobs
