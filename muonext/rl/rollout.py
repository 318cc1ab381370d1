"""Rollouts with partial rollouts and repeat detection (k1.5 Sec. 2.6.1), on the latent-cache generator.

One call of `rollout` advances a batch of trajectories by at most one *segment*: each trajectory may
generate up to `segment_tokens` tokens in this iteration (the per-iteration output-token budget; 0 means
no budget: run to EOS or `max_new_tokens`). New trajectories start from their prompt; trajectories
taken from the `ReplayBuffer` are *re-prefilled* from prompt + the tokens generated so far, because the
weights changed since they stopped and the latent cache of the old weights is stale (see
`muonext.models.generation`). Within a call the batch is generated in chunks of `check_every` tokens
through the generator's state (same weights, so chunking changes nothing); between chunks every
unfinished row is checked by a `RepeatDetector` and a degenerate one is ended early (status "repeat").

Statuses after a call: "finished" (emitted EOS), "repeat" (ended as degenerate), "truncated" (reached
`max_new_tokens` in total without EOS), "partial" (budget of this iteration spent: back to the buffer).

Which tokens take gradient for a trajectory that spans iterations (RLConfig.partial_grad):

* ``"all"`` (default): when it finishes in iteration i, *all* its generated tokens form y in
  log π(y|x), scored under the current policy, and the reference log π_i(y|x) is computed with the
  weights of iteration i (the policy at the start of the iteration where it finished, before any
  gradient step of that iteration). The reward is a property of the whole response, so the whole
  response is what the mirror-descent step should move, and π_i of the finishing iteration is the
  only snapshot all of y is scored against consistently. Earlier segments were sampled by older
  policies (at most `buffer_max_age` iterations old); we accept that small off-policyness, as k1.5 does.
* ``"last_segment"``: only the tokens generated in the finishing iteration (sampled by π_i itself) take
  gradient; the earlier segments are context (the paper's option of excluding older segments from the
  loss). Exactly on-policy, at the cost of signal on the earlier tokens.

Each trajectory keeps the log-probs of this iteration's segment under the policy that sampled it (π_i,
at `logprob_temperature`: 1, or the sampling temperature with RLConfig.logprob_temperature="sampling"): the trainer takes log π_i of those tokens from them instead of a forward pass
(RLConfig.reference_logprobs). `RolloutStats.entropy` is the mean entropy of the policy's distributions
over every token generated in the call.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from muonext.models.generation import generate, select_rows

from .repeat import RepeatDetector
from .replay import PartialRollout

STATUSES = ("finished", "repeat", "truncated", "partial")


@dataclass
class Trajectory:
    """A trajectory after this iteration's segment. `tokens` are all generated tokens (EOS included
    when finished); `segment_start` is where this iteration's segment begins in `tokens`."""

    prompt_id: int
    group: str  # the samples launched together for one prompt share a group (the baseline's group)
    prompt_tokens: list[int]
    tokens: list[int]
    segment_start: int
    start_iter: int
    segments: int
    status: str = "partial"
    meta: dict = field(default_factory=dict)
    segment_logprobs: list[float] = field(default_factory=list)  # of tokens[segment_start:] under π_i

    @property
    def done(self) -> bool:
        return self.status != "partial"

    def to_partial(self) -> PartialRollout:
        return PartialRollout(
            prompt_id=self.prompt_id,
            prompt_tokens=list(self.prompt_tokens),
            generated=list(self.tokens),
            start_iter=self.start_iter,
            segments=self.segments,
            meta={"group": self.group, **self.meta},
        )


@dataclass
class RolloutStats:
    new_tokens: int
    seconds: float
    prefill_tokens: int
    entropy: float = 0.0  # mean over the new tokens, nats

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / max(self.seconds, 1e-9)


def new_request(prompt_id: int, prompt_tokens: Sequence[int], iteration: int, sample: int) -> PartialRollout:
    return PartialRollout(
        prompt_id=prompt_id,
        prompt_tokens=list(prompt_tokens),
        generated=[],
        start_iter=iteration,
        segments=0,
        meta={"group": f"{prompt_id}@{iteration}", "sample": sample},
    )


def rollout(
    model,
    requests: Sequence[PartialRollout],
    *,
    eos_id: int,
    max_new_tokens: int,
    segment_tokens: int = 0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    repeat: RepeatDetector | None = None,
    check_every: int = 16,
    logprob_temperature: float = 1.0,
) -> tuple[list[Trajectory], RolloutStats]:
    """Advance every request by one segment; returns the trajectories (same order) and timing."""
    if not requests:
        return [], RolloutStats(0, 0.0, 0)
    seg = segment_tokens if segment_tokens > 0 else max_new_tokens
    remaining = [min(seg, max_new_tokens - len(r.generated)) for r in requests]
    bad = [i for i, n in enumerate(remaining) if n < 1]
    if bad:
        raise ValueError(f"rollout: requests {bad[:5]} already hold max_new_tokens={max_new_tokens} tokens")
    before = [len(r.generated) for r in requests]
    inputs = [list(r.prompt_tokens) + list(r.generated) for r in requests]
    ended_by_repeat: set[int] = set()
    step = max(1, check_every) if repeat is not None else max(remaining)
    t0 = time.perf_counter()
    result = generate(model, inputs, [min(step, n) for n in remaining], temperature=temperature,
                      stop_tokens=[eos_id], generator=generator, logprob_temperature=logprob_temperature)
    while True:
        st = result.state
        keep = []
        for j, r in enumerate(st.rows):
            made = len(result.tokens[r])
            if made >= remaining[r] or st.finished[r]:
                continue
            if repeat is not None and repeat(list(requests[r].generated) + result.tokens[r]) is not None:
                ended_by_repeat.add(r)
                continue
            keep.append(j)
        if not keep:
            break
        st = select_rows(st, torch.tensor(keep, dtype=torch.long))
        budgets = [max(1, min(step, remaining[r] - len(result.tokens[r]))) for r in range(len(requests))]
        result = generate(model, state=st, max_new_tokens=budgets, temperature=temperature,
                          stop_tokens=[eos_id], generator=generator, logprob_temperature=logprob_temperature)
    seconds = time.perf_counter() - t0
    out = []
    for i, r in enumerate(requests):
        tokens = list(r.generated) + result.tokens[i]
        if result.finished[i]:
            status = "finished"
        elif i in ended_by_repeat or (repeat is not None and repeat(tokens) is not None):
            status = "repeat"
        elif len(tokens) >= max_new_tokens:
            status = "truncated"
        else:
            status = "partial"
        meta = {k: v for k, v in r.meta.items() if k != "group"}
        out.append(Trajectory(int(r.prompt_id), str(r.meta.get("group", r.prompt_id)), list(r.prompt_tokens),
                              tokens, before[i], r.start_iter, r.segments + 1, status, meta, result.logprobs[i]))
    new = sum(len(t.tokens) - b for t, b in zip(out, before))
    entropy = sum(sum(e) for e in result.entropies) / max(new, 1)
    return out, RolloutStats(new, seconds, sum(len(x) for x in inputs), entropy)
