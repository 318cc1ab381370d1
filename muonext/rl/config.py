"""Typed configuration of the k1.5 RL trainer (`RLConfig`) and of the CPU pipeline (`PipelineConfig`).

Every field is validated in `__post_init__` with a message naming it. `PipelineConfig.preset("debug")`
finishes end to end in about two minutes on two CPU cores; "tiny" is the benchmark-sized run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

PARTIAL_GRAD = ("all", "last_segment")
REFERENCE_LOGPROBS = ("rollout", "forward")


def _positive(obj: Any, *names: str) -> None:
    for n in names:
        if getattr(obj, n) <= 0:
            raise ValueError(f"{type(obj).__name__}.{n} must be > 0, got {getattr(obj, n)}")


def _non_negative(obj: Any, *names: str) -> None:
    for n in names:
        if getattr(obj, n) < 0:
            raise ValueError(f"{type(obj).__name__}.{n} must be >= 0, got {getattr(obj, n)}")


@dataclass
class RLConfig:
    """One RL run (k1.5 Sec. 2.3 and 2.6.1).

    Rollouts: `prompts_per_iter` new prompts × `samples_per_prompt` (k) trajectories per iteration, plus
    up to `max_continued` trajectories from the replay buffer. Each trajectory generates at most
    `segment_tokens` tokens per iteration (the partial-rollout budget; 0 = no partial rollouts: every
    trajectory runs to EOS or `max_new_tokens`); a trajectory that reaches `max_new_tokens` in total
    without EOS ends unfinished (reward `truncation_reward`).
    """

    iterations: int = 20
    prompts_per_iter: int = 8
    samples_per_prompt: int = 4
    max_new_tokens: int = 96
    segment_tokens: int = 0
    max_continued: int = 64
    buffer_capacity: int = 256
    buffer_max_age: int | None = 4
    temperature: float = 1.0
    truncation_reward: float = 0.0
    # repeat detection: checked every `repeat_check_every` generated tokens
    repeat_penalty: float = -1.0
    repeat_min_repeats: int = 4
    repeat_min_span: int = 24
    repeat_check_every: int = 16
    # loss and optimisation
    tau: float = 0.05
    lr: float = 3e-3
    weight_decay: float = 0.0
    optimizer: str = "muon"  # "muon" | "adamw"
    grad_steps: int = 2
    minibatch: int = 32
    reset_optimizer: bool = True
    # leave out of the gradient passes the groups whose samples all got the same reward: r − r̄ = 0, so
    # their only gradient is the τ term's pull back to π_i (zero on the first pass). Off: the paper's loss
    skip_uniform_groups: bool = False
    partial_grad: str = "all"  # see rollout.py: which tokens of a multi-iteration trajectory take gradient
    # log π_i of the responses: "rollout" sums the log-probs the sampler recorded for the tokens π_i itself
    # sampled (a forward pass only for older segments); "forward" scores every trained response again with a
    # forward pass. In float32 on a CPU the two differ by about 2e-5 nats on a 500-token response
    # (bench/RESULTS.md, RL run 13); the forward pass was a quarter of an iteration's time
    reference_logprobs: str = "rollout"
    # the distribution log π and log π_i are scored under: "one" the model's own (temperature 1, the
    # default, as k1.5's formulation), "sampling" the tempered one rollouts are drawn from (logits / T)
    logprob_temperature: str = "one"
    max_grad_norm: float = 1.0
    # The run hands on an exponential moving average of the policy's weights, updated after every
    # iteration with this decay (0: the last policy). Rollouts and gradient steps use the live policy; the
    # average smooths the swing of the live policy between iterations.
    policy_ema: float = 0.0
    # length reward (weight 0 = off) after `length_warmup` iterations
    length_weight: float = 0.0
    length_warmup: int = 0
    # problem sampling
    sampling: str = "curriculum+prioritized"
    sampling_unseen: str = "level"  # an unseen problem's success rate: its level's mean, or "zero"
    curriculum_ramp: int = 10
    checkpoint_every: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        _positive(self, "iterations", "prompts_per_iter", "samples_per_prompt", "max_new_tokens",
                  "buffer_capacity", "grad_steps", "minibatch", "repeat_min_repeats", "repeat_check_every",
                  "checkpoint_every", "lr", "max_grad_norm")
        _non_negative(self, "segment_tokens", "max_continued", "tau", "weight_decay", "length_weight",
                      "length_warmup", "curriculum_ramp", "temperature", "repeat_min_span")
        if self.optimizer not in ("muon", "adamw"):
            raise ValueError(f"RLConfig.optimizer must be 'muon' or 'adamw', got {self.optimizer!r}")
        if self.logprob_temperature not in ("one", "sampling"):
            raise ValueError(f"RLConfig.logprob_temperature must be 'one' or 'sampling', got "
                             f"{self.logprob_temperature!r}")
        if self.reference_logprobs not in REFERENCE_LOGPROBS:
            raise ValueError(f"RLConfig.reference_logprobs must be one of {REFERENCE_LOGPROBS}, "
                             f"got {self.reference_logprobs!r}")
        if self.partial_grad not in PARTIAL_GRAD:
            raise ValueError(f"RLConfig.partial_grad must be one of {PARTIAL_GRAD}, got {self.partial_grad!r}")
        if not 0.0 <= self.policy_ema < 1.0:
            raise ValueError(f"RLConfig.policy_ema must be in [0, 1), got {self.policy_ema}")
        if self.buffer_max_age is not None and self.buffer_max_age < 0:
            raise ValueError(f"RLConfig.buffer_max_age must be >= 0 or None, got {self.buffer_max_age}")

    def replace(self, **changes: Any) -> RLConfig:
        return dataclasses.replace(self, **changes)


@dataclass
class PipelineConfig:
    """SFT warm start → RL → evaluation → long2short (merge, shortest rejection sampling + DPO,
    long2short RL). Model sizes: `model_preset` of MoonlightConfig with `model_overrides` on top."""

    model_preset: str = "debug"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    difficulties: tuple[int, ...] = (1, 2)
    n_train: int = 512
    n_eval_per_difficulty: int = 32
    # SFT warm start on long-form solutions, and the short-CoT SFT model for merging
    sft_steps: int = 300
    sft_batch: int = 32
    sft_lr: float = 3e-3
    short_sft_steps: int = 60
    # RL
    rl: RLConfig = field(default_factory=RLConfig)
    # long2short. Shortest rejection sampling and DPO share one draw: `l2s_samples` responses at
    # `l2s_temperature` from the long (RL) model for each of the first `l2s_prompts` training problems.
    # Long2short RL samples at it too: from one RL model, at T = 0.7 it lost 46.5 held-out points (d2
    # 0.934 -> 0.348) in its 20 iterations, at 1.0 it lost 1.2 (bench/RESULTS.md, RL run 11)
    l2s_temperature: float = 1.0
    merge_ratio: float = 0.5
    l2s_samples: int = 4
    l2s_prompts: int = 64
    shortest_sft_steps: int = 40  # SFT of the long model on the shortest correct samples
    # at the warm start's 3e-3 it lost 12.5 points; at 3e-4 none (bench/RESULTS.md, RL run 6)
    shortest_sft_lr: float = 3e-4
    dpo_steps: int = 20
    dpo_beta: float = 0.1
    # Muon's update has a fixed RMS whatever the gradient's size: at 1e-3 a few dozen noisy pairs wipe the
    # model out, at 3e-5 it keeps its accuracy (bench/RESULTS.md, RL run 4)
    dpo_lr: float = 3e-5
    l2s_iterations: int = 4
    l2s_length_weight: float = 0.5
    # decay of the moving average long2short RL hands on (0: its last policy); see RLConfig.policy_ema
    l2s_policy_ema: float = 0.0
    l2s_max_new_tokens: int = 0  # 0: 3/4 of rl.max_new_tokens
    l2s_lr: float = 0.0  # 0: rl.lr
    eval_max_new_tokens: int = 0  # 0: rl.max_new_tokens
    # every model is also scored by sampling this many responses per held-out problem at the RL
    # temperature (0: greedy only)
    eval_samples: int = 4
    # user tasks without a difficulty: its level comes from the pass rate of this many samples (T = 1)
    difficulty_samples: int = 8
    stage_checkpoint_every: int = 100  # steps between mid-stage checkpoints of SFT / DPO (resume points)
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.rl, dict):
            self.rl = RLConfig(**self.rl)
        self.difficulties = tuple(int(d) for d in self.difficulties)
        if not self.difficulties or min(self.difficulties) < 1:
            raise ValueError(f"PipelineConfig.difficulties must be levels >= 1, got {self.difficulties}")
        _positive(self, "n_train", "n_eval_per_difficulty", "sft_batch", "sft_lr", "shortest_sft_lr",
                  "l2s_temperature", "l2s_samples", "l2s_prompts", "dpo_beta", "dpo_lr",
                  "stage_checkpoint_every", "difficulty_samples")
        _non_negative(self, "sft_steps", "short_sft_steps", "shortest_sft_steps", "dpo_steps", "l2s_iterations",
                      "l2s_length_weight", "l2s_max_new_tokens", "l2s_lr", "eval_max_new_tokens",
                      "eval_samples")
        if not 0.0 <= self.l2s_policy_ema < 1.0:
            raise ValueError(f"PipelineConfig.l2s_policy_ema must be in [0, 1), got {self.l2s_policy_ema}")
        if not 0.0 <= self.merge_ratio <= 1.0:
            raise ValueError(f"PipelineConfig.merge_ratio must be in [0, 1], got {self.merge_ratio}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> PipelineConfig:
        if name not in PIPELINE_PRESETS:
            raise ValueError(f"unknown pipeline preset {name!r}; choose one of {sorted(PIPELINE_PRESETS)}")
        base = PIPELINE_PRESETS[name]()
        rl = overrides.pop("rl", {})
        out = dataclasses.replace(base, **overrides)
        out.rl = base.rl.replace(**rl) if isinstance(rl, dict) else rl
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _debug() -> PipelineConfig:
    return PipelineConfig(
        model_preset="debug",
        difficulties=(1, 2),
        n_train=1024,
        n_eval_per_difficulty=32,
        sft_steps=400,
        sft_batch=32,
        short_sft_steps=40,
        # level-2 long solutions are up to 247 characters with the re-check
        rl=RLConfig(iterations=6, prompts_per_iter=8, samples_per_prompt=4, max_new_tokens=256,
                    segment_tokens=64, grad_steps=2, minibatch=32, lr=1e-4, tau=0.1, curriculum_ramp=3),
        l2s_prompts=32,
        shortest_sft_steps=10,
        dpo_steps=8,
        l2s_iterations=2,
    )


def _tiny() -> PipelineConfig:
    return PipelineConfig(
        model_preset="debug",
        # 4 layers: with 3, RL's d3 stalled at 0.73-0.78 greedy whatever the budget or batch, most wrong
        # answers going wrong inside a long multiplication. From SFT models trained alike, a 4th layer
        # took RL from 0.699 to 0.871 (+17.2) in 100 iterations, hidden 192 with 3 layers from 0.680 to
        # 0.805 (+12.5), for 1.3x and 1.4x the cost of a step (bench/RESULTS.md, RL run 14)
        model_overrides={"hidden_size": 128, "intermediate_size": 256, "moe_intermediate_size": 64,
                         "num_hidden_layers": 4, "kv_lora_rank": 32, "q_lora_rank": None},
        difficulties=(1, 2, 3),
        # 30k problems, each seen about once in SFT: with 2k the model memorised them (loss 0.05, held-out
        # accuracy d2 10%, d3 2%); with 30k it learns the arithmetic (d2 55%, d3 11% before the column
        # work in the long solutions, 98% and 39% with it; bench/RESULTS.md)
        n_train=30000,
        # 64 per level left a d3 reading a standard error of about 6 points (bench/RESULTS.md, RL run 6)
        n_eval_per_difficulty=256,
        sft_steps=1200,
        sft_batch=32,
        # the short model (bare-equation solutions, from the RL model): 120 steps left it 16 points below
        # the long model on d2; 400 put it 9 points above at a third of the length (bench/RESULTS.md)
        short_sft_steps=400,
        # long solutions with column work, long multiplication and the re-check: up to 247 characters on
        # level 2, 632 on level 3 (1% over 579). 100 iterations were 15 CPU-minutes of RL, the benchmark's
        # budget (RL run 8: 101 in 907 CPU-s); with log π_i from the rollout they are about 600, and 145-149
        # iterations in 900 CPU-s read the same as 100 (RL run 13); with 4 layers about 710 (RL run 14). No
        # partial rollouts: on a CPU re-prefilling the continued trajectories costs more than it saves
        # (bench/RESULTS.md); the debug preset has them.
        # Rollouts at temperature 0.7: RL run 10 from one SFT model, greedy d3 after 900 CPU-s, +8.2 and
        # +6.2 points at 0.7 against +1.1 and -3.2 at 1.0 (two seeds each), and +0.8 and +8.2 at 0.5
        # (bench/RESULTS.md). The stage hands on the policy's moving average (decay 0.97 per iteration):
        # greedy d3 after 900 CPU-s +12.9, +11.3 and +14.0 points (three seeds), where the live policy of the
        # same runs gained +11.3, +7.8 and +5.4, and no loss on d2 (RL run 12's sweeps)
        rl=RLConfig(iterations=100, prompts_per_iter=16, samples_per_prompt=8, max_new_tokens=640,
                    segment_tokens=0, grad_steps=2, minibatch=32, lr=1e-4, tau=0.1, curriculum_ramp=10,
                    skip_uniform_groups=True, temperature=0.7, policy_ema=0.97),
        l2s_prompts=512,
        shortest_sft_steps=80,
        dpo_steps=30,
        # long2short RL from the averaged RL model of RL run 12: its last policy after 20 iterations at
        # length weight 0.5 lost 7.6 points; 30 at 0.25 with the policy average (0.9) lost 2.1 and 0.4 (two
        # seeds), at 0.2 1.9 and 1.0, all at -39% length. From run 13's RL model at 0.2 it lost 3.5 and 2.0 at
        # the RL lr (1e-4), 0.8 and 1.4 at 5e-5, the same -38% length. At 5e-5 the average of 30 iterations
        # may still re-check (run 12's model: -30% and -25% length); 40 iterations: -38.6% at -1.0 and -38.4%
        # at -0.4 (RL runs 12 and 13), and with 4 layers -38.0% at -1.0 (RL run 14)
        l2s_iterations=40,
        l2s_length_weight=0.2,
        l2s_lr=5e-5,
        l2s_policy_ema=0.9,
    )


PIPELINE_PRESETS = {"debug": _debug, "tiny": _tiny}
