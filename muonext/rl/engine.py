"""Where rollouts come from: the `RolloutEngine` interface and its first implementation.

The trainer asks an engine to advance a batch of requests (new prompts and unfinished trajectories
from the replay buffer) by one segment, and tells it when the policy's weights changed. Today's
engine, `LocalSampler`, samples with this process's model and its latent KV cache (`rollout.py`): it
holds the trained model itself, so a weight update is nothing to do. At scale the engine is an
inference server (vLLM, SGLang) on its own GPUs, fed with the sharded trainer's weights after each
iteration (docs/design.md §9); that is another class with the same two methods, not a change to the
trainer.

What an engine must return per request (a `rollout.Trajectory`): all generated tokens (EOS included when
finished), where this segment started, the status (finished / repeat / truncated / partial) and the
log-probs of this segment's tokens under the policy that sampled them, at the temperature the trainer
scores at (`logprob_temperature`) — the trainer takes log π_i from them
(RLConfig.reference_logprobs="rollout").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from .repeat import RepeatDetector
from .replay import PartialRollout
from .rollout import RolloutStats, Trajectory, rollout

__all__ = ["LocalSampler", "RolloutEngine"]


class RolloutEngine(Protocol):
    def generate(self, requests: Sequence[PartialRollout], *, max_new_tokens: int, segment_tokens: int,
                 temperature: float, logprob_temperature: float = 1.0
                 ) -> tuple[list[Trajectory], RolloutStats]:
        """Advance every request by at most one segment (same order as `requests`); the log-probs at
        `logprob_temperature`."""
        ...

    def update_weights(self, model: torch.nn.Module) -> None:
        """The policy changed (after an iteration's optimizer steps): sample from `model`'s weights next."""
        ...


class LocalSampler:
    """Samples with the trained model itself, in this process (the latent-cache generator)."""

    def __init__(self, model: torch.nn.Module, eos_id: int, generator: torch.Generator,
                 repeat: RepeatDetector | None = None, check_every: int = 16) -> None:
        self.model, self.eos_id, self.generator = model, eos_id, generator
        self.repeat, self.check_every = repeat, check_every

    def generate(self, requests: Sequence[PartialRollout], *, max_new_tokens: int, segment_tokens: int,
                 temperature: float, logprob_temperature: float = 1.0
                 ) -> tuple[list[Trajectory], RolloutStats]:
        return rollout(self.model, requests, eos_id=self.eos_id, max_new_tokens=max_new_tokens,
                       segment_tokens=segment_tokens, temperature=temperature, generator=self.generator,
                       repeat=self.repeat, check_every=self.check_every,
                       logprob_temperature=logprob_temperature)

    def update_weights(self, model: torch.nn.Module) -> None:
        if model is not self.model:
            raise ValueError("LocalSampler samples with the model it was given; pass that model")
