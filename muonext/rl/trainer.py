"""The k1.5 RL trainer: online policy mirror descent with partial rollouts (DESIGN.md §7).

Per iteration i (`RLTrainer.step`):
 1. optionally reset the optimizer (k1.5's choice, `reset_optimizer=True`): each iteration solves a new
    mirror-descent sub-problem around π_i, so momentum from the previous sub-problem is stale;
 2. continue up to `max_continued` unfinished trajectories from the replay buffer (expired ones are
    dropped) and start `prompts_per_iter` new prompts × k samples, drawn by the `ProblemSampler`
    (curriculum and/or prioritized);
 3. roll out one segment each through the `RolloutEngine` (engine.py; by default this process's
    sampler, rollout.py): finished / repeat / truncated trajectories are scored, partial ones go back to
    the buffer;
 4. rewards: the task's verifier (1/0), `repeat_penalty` for degenerate ones, `truncation_reward` for
    ones that hit the length limit, scored when a trajectory finishes; it then waits (`groups.py`)
    until every sample of its group (prompt × launch iteration) has finished or been dropped, and the
    complete group is trained, with the weighted length reward after `length_warmup` ranked among its
    samples and the baseline r̄ its mean (with partial rollouts, siblings finish in other iterations);
 5. log π_i(y|x) of the trained responses once, before any gradient step of this iteration: from the
    log-probs the rollout recorded (`reference_logprobs="rollout"`, where π_i sampled every scored token)
    or a forward pass with the weights as they are now (= π_i); then `grad_steps` passes of `pmd_loss`
    over minibatches of whole groups (r̄ is the group mean, so a group is never split), leaving out
    groups of equal rewards with `skip_uniform_groups`;
 6. update the sampler's success rates with the outcomes of each prompt;
 7. with `policy_ema` > 0, move the moving average of the policy's weights towards the new weights
    (`policy_state()` is what the run hands on).

State is the model, the policy average, the optimizer, the sampler, the replay buffer and the RNGs; with
`save`/`resume` through `muonext.train.checkpoint` (safetensors + JSON, checksummed, no pickle), a
resumed run continues exactly as the uninterrupted one (CPU, fp32).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from muonext.optim import Muon, muon_param_groups
from muonext.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    py_rng_state,
    save_checkpoint,
    set_py_rng_state,
)

from .config import RLConfig
from .engine import LocalSampler, RolloutEngine
from .groups import GroupTracker
from .length import LengthPenalty
from .loss import pmd_loss, sequence_logprobs
from .repeat import RepeatDetector
from .replay import ReplayBuffer
from .rollout import Trajectory, new_request
from .sampling import CurriculumSchedule, ProblemSampler
from .text_codec import CharCodec

STATE_VERSION = 1


def batch_tensors(trajs: Sequence[Trajectory], pad_id: int, last_segment: bool = False):
    """(tokens, attention, response_mask) (N, T) of prompt + generated tokens, right-padded."""
    seqs = [t.prompt_tokens + t.tokens for t in trajs]
    T = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attn = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, (t, s) in enumerate(zip(trajs, seqs)):
        tokens[i, : len(s)] = torch.as_tensor(s)
        attn[i, : len(s)] = 1
        start = len(t.prompt_tokens) + (t.segment_start if last_segment else 0)
        mask[i, start : len(s)] = True
    return tokens, attn, mask


def make_optimizer(model: torch.nn.Module, cfg: RLConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "muon":
        return Muon(muon_param_groups(model), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))


class RLTrainer:
    """`tasks[i]` has `.prompt`, `.difficulty` and `.reward(text) -> RewardResult` (see task_adapter)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tasks: Sequence[Any],
        cfg: RLConfig,
        codec: CharCodec | None = None,
        ckpt_dir: str | Path | None = None,
        log: Callable[[dict], None] | None = None,
        engine: RolloutEngine | None = None,
    ) -> None:
        self.model, self.tasks, self.cfg = model, list(tasks), cfg
        self.codec = codec or CharCodec()
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else None
        self.log = log or (lambda record: None)
        levels = [t.difficulty for t in self.tasks]
        self.sampler = ProblemSampler(
            levels, strategy=cfg.sampling,
            curriculum=CurriculumSchedule(min(levels), max(levels), ramp_iters=cfg.curriculum_ramp),
            seed=cfg.seed, unseen=cfg.sampling_unseen, mix=[getattr(t, "weight", 1.0) for t in self.tasks],
        )
        self.buffer = ReplayBuffer(cfg.buffer_capacity, cfg.buffer_max_age)
        self.groups = GroupTracker()
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.shuffle_rng = random.Random(cfg.seed + 1)
        self.repeat = RepeatDetector(min_repeats=cfg.repeat_min_repeats, min_span=cfg.repeat_min_span,
                                     max_ngram=32, penalty=cfg.repeat_penalty)
        self.length = LengthPenalty(cfg.length_weight, cfg.length_warmup)
        # where rollouts come from (engine.py): by default this process's model and sampler
        self.engine = engine or LocalSampler(model, self.codec.eos_id, self.generator, self.repeat,
                                             cfg.repeat_check_every)
        self.optimizer = make_optimizer(model, cfg)
        self.policy_average = (
            {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
            if cfg.policy_ema > 0 else None
        )
        self.iteration = 0
        self._prompt_cache: dict[int, list[int]] = {}

    # ------------------------------------------------------------------------------------- rollouts
    def _prompt(self, idx: int) -> list[int]:
        if idx not in self._prompt_cache:
            self._prompt_cache[idx] = self.codec.prompt_ids(self.tasks[idx].prompt)
        return self._prompt_cache[idx]

    def _requests(self, i: int):
        cfg = self.cfg
        continued, expired = self.buffer.take(cfg.max_continued, i)
        fresh = []
        for p in self.sampler.sample(cfg.prompts_per_iter, i):
            fresh += [new_request(p, self._prompt(p), i, s) for s in range(cfg.samples_per_prompt)]
            self.groups.launch(fresh[-1].meta["group"], cfg.samples_per_prompt)
        return continued + fresh, len(continued), expired

    def _score(self, done: list[Trajectory], i: int) -> int:
        """The verifier's reward of each newly finished trajectory, kept in its meta; returns the number
        of rewards that failed (sandbox errors)."""
        errors = 0
        for t in done:
            if t.status == "repeat":
                r, ok = self.cfg.repeat_penalty, False
            elif t.status == "truncated":
                r, ok = self.cfg.truncation_reward, False
            else:
                res = self.tasks[t.prompt_id].reward(self.codec.decode(t.tokens))
                r, ok, errors = res.reward, res.correct, errors + (res.error is not None)
            t.meta.update(reward=float(r), correct=bool(ok), finished_iter=i)
        return errors

    def _rewards(self, ready: list[Trajectory], i: int) -> list[float]:
        """Final rewards of the trajectories of complete groups: the verifier's, plus the length reward
        ranked among the finished samples of the same group."""
        rewards = [t.meta["reward"] for t in ready]
        if self.length.active(i):
            for members in self._groups(ready, range(len(ready))):
                extra = self.length([len(ready[j].tokens) for j in members],
                                    [ready[j].meta["correct"] for j in members], i)
                for j, x in zip(members, extra):
                    rewards[j] += x
        return rewards

    # ------------------------------------------------------------------------------------- one step
    @property
    def _score_temperature(self) -> float:
        """The temperature log π and log π_i are taken at (RLConfig.logprob_temperature)."""
        return self.cfg.temperature if self.cfg.logprob_temperature == "sampling" else 1.0

    def _forward_logp(self, trajs: Sequence[Trajectory]) -> torch.Tensor:
        tokens, attn, mask = batch_tensors(trajs, self.codec.pad_id, self.cfg.partial_grad == "last_segment")
        logits = self.model(tokens, attention_mask=attn).logits
        if self._score_temperature != 1.0:
            logits = logits.float() / self._score_temperature
        return sequence_logprobs(logits, tokens, mask)

    @torch.no_grad()
    def _reference_logp(self, done: list[Trajectory], trained: Sequence[int]) -> torch.Tensor:
        """(len(done),) log π_i(y|x) of the trained responses (NaN elsewhere), before any gradient step.

        With `reference_logprobs="rollout"`, a response whose scored tokens were all sampled in this
        iteration sums the log-probs the sampler recorded (π_i's own, at the scoring temperature); the
        others (earlier segments scored under partial_grad "all", responses that waited for their group)
        and every response with "forward" take a forward pass.
        """
        ref = torch.full((len(done),), float("nan"))
        from_rollout = self.cfg.reference_logprobs == "rollout"
        last_segment = self.cfg.partial_grad == "last_segment"
        forward = []
        for j in trained:
            sampled_now = done[j].meta["finished_iter"] == self.iteration  # else it waited for its group
            if from_rollout and sampled_now and (last_segment or done[j].segment_start == 0):
                ref[j] = math.fsum(done[j].segment_logprobs)
            else:
                forward.append(j)
        for mb in self._minibatches_plain(len(forward)):
            rows = [forward[m] for m in mb]
            ref[rows] = self._forward_logp([done[j] for j in rows])
        return ref

    def _groups(self, done: Sequence[Trajectory], members: Sequence[int]) -> list[list[int]]:
        groups = defaultdict(list)
        for j in members:
            groups[done[j].group].append(j)
        return list(groups.values())

    def _trained(self, done: list[Trajectory], rewards: list[float]) -> list[int]:
        """Indices into `done` that take gradient: all, or with `skip_uniform_groups` those of groups
        whose rewards differ."""
        every = range(len(done))
        if not self.cfg.skip_uniform_groups:
            return list(every)
        return [j for g in self._groups(done, every) if len({rewards[i] for i in g}) > 1 for j in g]

    def _minibatches(self, done: list[Trajectory], members: Sequence[int]) -> list[list[int]]:
        order = self._groups(done, members)
        self.shuffle_rng.shuffle(order)
        batches, cur = [], []
        for g in order:
            if cur and len(cur) + len(g) > self.cfg.minibatch:
                batches.append(cur)
                cur = []
            cur = cur + g
        return batches + ([cur] if cur else [])

    def step(self) -> dict[str, Any]:
        cfg, i = self.cfg, self.iteration
        if cfg.reset_optimizer:
            self.optimizer = make_optimizer(self.model, cfg)
        requests, n_continued, expired = self._requests(i)
        for lost in expired:
            self.groups.drop(lost.meta["group"])
        trajs, stats = self.engine.generate(requests, max_new_tokens=cfg.max_new_tokens,
                                            segment_tokens=cfg.segment_tokens, temperature=cfg.temperature,
                                            logprob_temperature=self._score_temperature)
        dropped = 0
        for t in trajs:
            if not t.done:
                for lost in self.buffer.add(t.to_partial()):
                    self.groups.drop(lost.meta["group"])
                    dropped += 1
        done = [t for t in trajs if t.done]
        record: dict[str, Any] = {
            "iteration": i, "rollouts": len(trajs), "continued": n_continued, "expired": len(expired),
            "dropped_capacity": dropped, "finished": len(done), "replay_buffer": len(self.buffer),
            "rollout_tokens": stats.new_tokens, "rollout_tokens_per_s": stats.tokens_per_s,
            "entropy": stats.entropy, "repeat_ended": sum(t.status == "repeat" for t in done),
            "truncated": sum(t.status == "truncated" for t in done),
            "max_difficulty": self.sampler.curriculum.max_allowed(i),
        }
        if done:
            t0 = time.perf_counter()
            record["reward_errors"] = self._score(done, i)
            record["reward_seconds"] = time.perf_counter() - t0
            by_prompt = defaultdict(list)
            for t in done:
                by_prompt[t.prompt_id].append(t.meta["correct"])
                self.groups.finish(t)
            for p, oks in by_prompt.items():
                self.sampler.update(p, oks)
            record.update(accuracy=sum(t.meta["correct"] for t in done) / len(done),
                          mean_length=sum(len(t.tokens) for t in done) / len(done),
                          segments_mean=sum(t.segments for t in done) / len(done))
        else:
            record.update(accuracy=0.0, mean_length=0.0, reward_errors=0)
        ready = self.groups.complete()  # the samples of groups that have all finished (or were dropped)
        record["waiting"] = self.groups.held()
        if ready:
            rewards = self._rewards(ready, i)
            r_all = torch.tensor(rewards)
            gid = {g: n for n, g in enumerate(dict.fromkeys(t.group for t in ready))}
            groups_all = torch.tensor([gid[t.group] for t in ready])
            trained = self._trained(ready, rewards)
            logp_ref = self._reference_logp(ready, trained)
            self.model.train()
            last: dict[str, float] = {}
            for _ in range(cfg.grad_steps):
                for mb in self._minibatches(ready, trained):
                    idx = torch.tensor(mb)
                    logp = self._forward_logp([ready[j] for j in mb])
                    loss, last = pmd_loss(logp, logp_ref[idx], r_all[idx], cfg.tau, group_ids=groups_all[idx])
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                    self.optimizer.step()
            self.engine.update_weights(self.model)
            record.update(
                reward=sum(rewards) / len(rewards), log_ratio=last.get("log_ratio_mean", 0.0),
                log_ratio_rms=last.get("log_ratio_rms", 0.0), loss_pg=last.get("loss_pg", 0.0),
                loss_kl=last.get("loss_kl", 0.0), trained=len(trained),
            )
        else:
            record.update(reward=0.0, log_ratio=0.0, log_ratio_rms=0.0, trained=0)
        self._update_policy_average()
        self.iteration += 1
        return record

    def _update_policy_average(self) -> None:
        if self.policy_average is None:
            return
        live = self.model.state_dict()
        with torch.no_grad():
            for k, avg in self.policy_average.items():
                avg.lerp_(live[k], 1.0 - self.cfg.policy_ema)

    def policy_state(self) -> dict[str, torch.Tensor]:
        """The weights the run hands on: the policy's moving average with `policy_ema` > 0, else the
        live policy's."""
        live = self.model.state_dict()
        return live if self.policy_average is None else {**live, **self.policy_average}

    def _minibatches_plain(self, n: int) -> list[list[int]]:
        m = self.cfg.minibatch
        return [list(range(s, min(n, s + m))) for s in range(0, n, m)]

    # ------------------------------------------------------------------------------------- loop
    def train(self, iterations: int | None = None, progress: bool = True) -> list[dict[str, Any]]:
        """Run up to `iterations` (default cfg.iterations) in total, saving every `checkpoint_every`."""
        total = self.cfg.iterations if iterations is None else iterations
        records = []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.iteration, desc="rl", leave=False)
        while self.iteration < total:
            record = self.step()
            records.append(record)
            self.log(record)
            if self.ckpt_dir is not None and (
                self.iteration % self.cfg.checkpoint_every == 0 or self.iteration == total
            ):
                self.save()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{record['reward']:.2f}", acc=f"{record['accuracy']:.2f}",
                                len=f"{record['mean_length']:.0f}", buf=record["replay_buffer"])
        if bar is not None:
            bar.close()
        return records

    # ------------------------------------------------------------------------------------- state
    def save(self, keep_last: int = 2) -> Path:
        if self.ckpt_dir is None:
            raise ValueError("RLTrainer.save: no ckpt_dir")
        path = save_checkpoint(
            self.ckpt_dir, self.iteration, model_state=self.model.state_dict(),
            rank_state={"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                        "torch_rng": torch.get_rng_state(), "policy_average": self.policy_average},
            shared={"version": STATE_VERSION, "iteration": self.iteration,
                    "sampler": self.sampler.state_dict(), "buffer": self.buffer.state_dict(),
                    "groups": self.groups.state_dict(),
                    "shuffle_rng": py_rng_state(self.shuffle_rng), "config": dataclasses.asdict(self.cfg)},
        )
        prune_checkpoints(self.ckpt_dir, keep_last=keep_last)
        return path

    def resume(self) -> bool:
        """Load the latest checkpoint in ckpt_dir if there is one; returns whether it did."""
        path = latest_checkpoint(self.ckpt_dir) if self.ckpt_dir is not None else None
        if path is None:
            return False
        ck = load_checkpoint(path)
        shared, rank = ck.shared, ck.rank_state(0)
        if shared.get("version") != STATE_VERSION:
            raise ValueError(f"{path}: RL trainer state version {shared.get('version')!r} is not {STATE_VERSION}")
        saved_average = rank.get("policy_average")
        if (saved_average is None) != (self.policy_average is None):
            written = "without" if saved_average is None else "with"
            raise ValueError(f"{path}: written {written} a policy average, but RLConfig.policy_ema = "
                             f"{self.cfg.policy_ema}; resume with the policy_ema the run started with")
        self.model.load_state_dict(ck.model_state())
        if saved_average is not None:
            self.policy_average = {k: v.clone() for k, v in saved_average.items()}
        self.optimizer.load_state_dict(rank["optimizer"])
        self.generator.set_state(rank["generator"])
        torch.set_rng_state(rank["torch_rng"])
        self.sampler.load_state_dict(shared["sampler"])
        self.buffer.load_state_dict(shared["buffer"])
        if "groups" in shared:  # checkpoints before groups waited for their samples have none
            self.groups.load_state_dict(shared["groups"])
        set_py_rng_state(self.shuffle_rng, shared["shuffle_rng"])
        self.iteration = int(shared["iteration"])
        return True

