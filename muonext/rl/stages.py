"""Model-level steps of the pipeline: SFT on (prompt, response) pairs, greedy evaluation per difficulty,
sampling k responses per prompt, and DPO. Each is a plain function of a model and data; "problems"
are arithmetic `Problem`s or tasks with `.prompt`, `.difficulty` and `.reward(text)` (user tasks)."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from muonext.models.generation import generate
from muonext.optim import Muon, muon_param_groups
from muonext.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    py_rng_state,
    save_checkpoint,
    set_py_rng_state,
)

from .dpo import build_dpo_pairs, dpo_loss
from .loss import sequence_logprobs
from .tasks import Problem
from .text_codec import CharCodec
from .verify import verify


def _pad(seqs: Sequence[Sequence[int]], pad_id: int):
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attn = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s))
        attn[i, : len(s)] = 1
    return ids, attn


class StepCheckpoints:
    """Mid-stage checkpoints of a step loop (SFT, DPO): every `every` steps the model, the optimizer, the
    LR schedule, the RNGs and the loop's own JSON state go to `root` (atomic, verified; the last two kept),
    so a stage killed half-way resumes at its last checkpoint and ends exactly as an uninterrupted run."""

    def __init__(self, root: str | Path, every: int) -> None:
        if every < 1:
            raise ValueError(f"StepCheckpoints: every must be >= 1, got {every}")
        self.root, self.every = Path(root), every

    def save(self, step: int, model, opt, sched, rng: random.Random, loop_state: dict) -> None:
        """After `step` steps (only on multiples of `every`)."""
        if step % self.every:
            return
        save_checkpoint(
            self.root, step, model_state=model.state_dict(),
            rank_state={"optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state()},
            shared={"scheduler": None if sched is None else sched.state_dict(), "rng": py_rng_state(rng),
                    "loop": loop_state},
        )
        prune_checkpoints(self.root, keep_last=2)

    def restore(self, model, opt, sched, rng: random.Random) -> tuple[int, dict]:
        """-> (steps already done, the loop's JSON state); (0, {}) when there is no checkpoint."""
        path = latest_checkpoint(self.root)
        if path is None:
            return 0, {}
        ck = load_checkpoint(path)
        model.load_state_dict(ck.model_state())
        rank = ck.rank_state(0)
        opt.load_state_dict(rank["optimizer"])
        torch.set_rng_state(rank["torch_rng"])
        if sched is not None:
            sched.load_state_dict(ck.shared["scheduler"])
        set_py_rng_state(rng, ck.shared["rng"])
        return ck.step, ck.shared["loop"]


def sft_train(
    model: torch.nn.Module,
    examples: Sequence[tuple[list[int], list[int]]],
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    pad_id: int,
    log: Callable[[int, float], None] | None = None,
    progress: str | None = None,
    checkpoints: StepCheckpoints | None = None,
) -> float:
    """`steps` Muon steps of cross-entropy on the responses only (prompt tokens are not scored), with
    a 10% linear warm-up and linear decay. Resumes from `checkpoints` when they hold a step. Returns the
    last loss."""
    if steps == 0:
        return float("nan")
    opt = Muon(muon_param_groups(model), lr=lr, weight_decay=0.0)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.05, (steps - s) / max(1, steps - warm)))
    )
    rng = random.Random(seed)
    order: list[int] = []
    start = 0
    if checkpoints is not None:
        start, loop = checkpoints.restore(model, opt, sched, rng)
        order = loop.get("order", [])
    model.train()
    loss_value = float("nan")
    bar = _bar(steps, progress)
    if bar is not None:
        bar.update(start)
    for step in range(start, steps):
        if len(order) < batch:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order += fresh
        idx, order = order[:batch], order[batch:]
        seqs = [examples[i][0] + examples[i][1] for i in idx]
        ids, attn = _pad(seqs, pad_id)
        labels = ids.masked_fill(attn == 0, -100)
        for r, i in enumerate(idx):
            labels[r, : len(examples[i][0])] = -100
        loss = model(ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_value = loss.item()
        if checkpoints is not None:
            checkpoints.save(step + 1, model, opt, sched, rng, {"order": order})
        if log is not None and (step % 10 == 0 or step == steps - 1):
            log(step, loss_value)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}")
    if bar is not None:
        bar.close()
    return loss_value


def _bar(total: int, desc: str | None):
    if desc is None:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False)


def is_correct(item, text: str) -> bool:
    """Whether `text` solves `item`: a task (anything with `.reward(text)`, code rows included) or an
    arithmetic `Problem` (the exact verifier)."""
    if hasattr(item, "reward"):
        return item.reward(text).correct
    return verify(text, item.answer)


def sample_responses(
    model: torch.nn.Module,
    problems: Sequence[Problem],
    codec: CharCodec,
    n: int,
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator | None = None,
    batch: int = 64,
) -> list[list[list[int]]]:
    """n responses per problem (token lists, EOS included when finished), prompt-major."""
    out: list[list[list[int]]] = []
    flat = [codec.prompt_ids(p.prompt) for p in problems for _ in range(n)]
    tokens: list[list[int]] = []
    for s in range(0, len(flat), batch):
        res = generate(model, flat[s : s + batch], max_new_tokens, temperature=temperature,
                       stop_tokens=[codec.eos_id], generator=generator)
        tokens += res.tokens
    for p in range(len(problems)):
        out.append(tokens[p * n : (p + 1) * n])
    return out


def evaluate(
    model: torch.nn.Module,
    problems: Sequence[Problem],
    codec: CharCodec,
    max_new_tokens: int,
    samples: int = 0,
    temperature: float = 1.0,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Greedy accuracy and mean response length (tokens) per difficulty, and "all". With `samples` > 0
    also "sampled_accuracy" and "sampled_mean_length": the mean correctness and length of that many
    responses per problem at `temperature` (the sampling policy RL trains, which greedy decoding is not:
    where the policy picks a strategy about as often as not, the greedy length flips with its argmax),
    from a generator seeded with `seed`."""
    responses = sample_responses(model, problems, codec, 1, max_new_tokens, temperature=0.0)
    acc, lens, sampled, sampled_lens = defaultdict(list), defaultdict(list), defaultdict(list), defaultdict(list)
    keys = [("all",) if p.difficulty is None else (str(p.difficulty), "all") for p in problems]
    for p, key, (toks,) in zip(problems, keys, responses):
        ok = is_correct(p, codec.decode(toks))
        for k in key:
            acc[k].append(ok)
            lens[k].append(len(toks))
    if samples:
        gen = torch.Generator().manual_seed(seed)
        drawn = sample_responses(model, problems, codec, samples, max_new_tokens, temperature, gen)
        for p, key, rs in zip(problems, keys, drawn):
            for k in key:
                sampled[k] += [is_correct(p, codec.decode(r)) for r in rs]
                sampled_lens[k] += [len(r) for r in rs]
    out = {k: {"accuracy": sum(acc[k]) / len(acc[k]), "mean_length": sum(lens[k]) / len(lens[k]),
               "n": len(acc[k])} for k in acc}
    for k, oks in sampled.items():
        out[k]["sampled_accuracy"] = sum(oks) / len(oks)
        out[k]["sampled_mean_length"] = sum(sampled_lens[k]) / len(sampled_lens[k])
    return out


def dpo_train(
    model: torch.nn.Module,
    ref_model: torch.nn.Module,
    pairs: Sequence[tuple[list[int], list[int], list[int]]],
    steps: int,
    batch: int,
    lr: float,
    beta: float,
    seed: int,
    pad_id: int,
    log: Callable[[int, dict], None] | None = None,
    checkpoints: StepCheckpoints | None = None,
) -> dict[str, float]:
    """DPO on (prompt, chosen, rejected) token triples against the frozen `ref_model`; resumes from
    `checkpoints` when they hold a step."""
    stats: dict[str, float] = {}
    if not pairs or steps == 0:
        return stats
    opt = Muon(muon_param_groups(model), lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    start = 0 if checkpoints is None else checkpoints.restore(model, opt, None, rng)[0]

    def logp(m, prompts, responses):
        seqs = [p + r for p, r in zip(prompts, responses)]
        ids, attn = _pad(seqs, pad_id)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for i, (p, r) in enumerate(zip(prompts, responses)):
            mask[i, len(p) : len(p) + len(r)] = True
        return sequence_logprobs(m(ids, attention_mask=attn).logits, ids, mask)

    model.train()
    for step in range(start, steps):
        chosen = [pairs[rng.randrange(len(pairs))] for _ in range(batch)]
        prompts, good, bad = (list(x) for x in zip(*chosen))
        with torch.no_grad():
            ref_c, ref_r = logp(ref_model, prompts, good), logp(ref_model, prompts, bad)
        loss, stats = dpo_loss(logp(model, prompts, good), logp(model, prompts, bad), ref_c, ref_r, beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if checkpoints is not None:
            checkpoints.save(step + 1, model, opt, None, rng, {})
        if log is not None:
            log(step, {"loss": loss.item(), **stats})
    return stats


def long2short_data(
    problems: Sequence[Problem], samples: Sequence[Sequence[list[int]]], codec: CharCodec, ratio: float = 1.5
) -> tuple[list[tuple[list[int], list[int], list[int]]], list[tuple[Problem, list[int]]]]:
    """What both long2short methods take from the long model's n samples per problem: the DPO triples
    (k1.5: shortest correct vs wrong and much longer ones) and the shortest-rejection-sampling set
    (problem, shortest correct response)."""
    from .long2short import shortest_rejection_sampling

    pairs, lengths, correct = [], [], []
    for p, rs in zip(problems, samples):
        ls = [len(r) for r in rs]
        cs = [is_correct(p, codec.decode(r)) for r in rs]
        lengths.append(ls)
        correct.append(cs)
        prompt = codec.prompt_ids(p.prompt)
        pairs += [(prompt, rs[c], rs[r]) for c, r in build_dpo_pairs(ls, cs, ratio)]
    shortest = shortest_rejection_sampling(list(problems), [list(r) for r in samples], lengths, correct)
    return pairs, shortest
