"""Batched sampling with a compressed MLA latent cache, for evaluation and RL rollouts.

Legend: B active sequences, L layers, S cache slots, Lat = kv_lora_rank + qk_rope_head_dim, V vocab.

* The cache is one tensor (L, B, S, Lat): per token and layer the normalised latent c and the rotated
  rope key — Lat numbers instead of transformers' H·(Qd + V) (see MLAttention). Decoding absorbs kv_b_proj
  into the query and output (`absorb=True`, default; `absorb=False` re-expands the cache every step).
* Prompts of different lengths are left-padded into one batch: slot j is the same step for every row,
  each row has its own padding (masked out) and its own positions (slot − pad). Rows that finish are
  dropped from the batch at once (and common leading padding is trimmed), so the batch only shrinks.
* Stopping: a row is *finished* when it emits one of `stop_tokens` (the stop token is kept in its
  tokens); it is *truncated* (not finished) when it reaches its `max_new_tokens` for this call.
* Continuing: `result.state` holds the cache of the unfinished rows and the last sampled tokens;
  `generate(model, state=result.state, max_new_tokens=n)` carries on from it (same weights only) and
  equals generating at once. After a weight update (k1.5 partial rollouts across iterations) re-prefill
  instead: `generate(model, [prompt + tokens, ...], ...)` recomputes the cache from the tokens.

`result.tokens[i]` is every token generated for sequence i since its prompt (across continuations);
`result.logprobs[i]` their log-probabilities under the model (at `logprob_temperature`: 1, the model's own
distribution, by default, or the sampling temperature; before top-k/top-p), and `result.entropies[i]` the
entropy (nats) of each of those distributions:
an RL trainer needs both of the policy that sampled, and they cost one (B, V) pass per step here against a
full forward pass later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .. import ops
from .moonlight import MoonlightForCausalLM


@dataclass
class GenerationState:
    """Everything needed to continue the unfinished rows of a batch (valid for the same weights only)."""

    cache: torch.Tensor  # (L, B, S, Lat) latent cache of the active rows; slots [0, length) filled
    length: int  # filled slots (shared by all rows: left-aligned steps)
    pad: torch.Tensor  # (B,) left padding of each active row
    rows: list[int]  # sequence index of each active row
    next_input: torch.Tensor  # (B,) last sampled token of each active row, not yet in the cache
    tokens: list[list[int]] = field(default_factory=list)  # generated tokens of every sequence
    logprobs: list[list[float]] = field(default_factory=list)
    entropies: list[list[float]] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # generated tokens per sequence (stop token included when finished)
    finished: list[bool]  # emitted a stop token
    lengths: list[int]  # len(tokens[i])
    logprobs: list[list[float]]
    entropies: list[list[float]]
    state: GenerationState


def sample_next(
    logits_BV: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token per row (B,). temperature 0 = greedy; top_k 0 / top_p 1 = off."""
    if temperature == 0.0:
        return logits_BV.argmax(-1)
    logits = logits_BV.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _prefill(model: MoonlightForCausalLM, prompts: Sequence[Sequence[int]], capacity: int, device, dtype):
    B, P = len(prompts), max(len(p) for p in prompts)
    ids = torch.zeros(B, P, dtype=torch.long, device=device)
    attn = torch.zeros(B, P, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        attn[i, P - len(p) :] = 1
    pad = torch.tensor([P - len(p) for p in prompts], device=device)
    pos = (torch.arange(P, device=device).unsqueeze(0) - pad.unsqueeze(1)).clamp_min(0)
    latents: list[torch.Tensor] = []
    hidden, _ = model.model(ids, attn, pos, latents_out=latents)
    c = model.config
    cache = torch.empty(
        c.num_hidden_layers, B, capacity, c.kv_lora_rank + c.qk_rope_head_dim, device=device, dtype=dtype
    )
    cache[:, :, :P] = torch.stack(latents)
    return cache, P, pad, model.lm_head(hidden[:, -1])


def _slot_mask(pad: torch.Tensor, S: int, dtype) -> torch.Tensor:
    """(B, S) additive mask: −inf on each row's left padding."""
    slots = torch.arange(S, device=pad.device).unsqueeze(0)
    return torch.zeros(pad.shape[0], S, dtype=dtype, device=pad.device).masked_fill(
        slots < pad.unsqueeze(1), float("-inf")
    )


@torch.inference_mode()
def generate(
    model: MoonlightForCausalLM,
    prompts: Sequence[Sequence[int]] | None = None,
    max_new_tokens: int | Sequence[int] = 128,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_tokens: Sequence[int] = (),
    generator: torch.Generator | None = None,
    state: GenerationState | None = None,
    absorb: bool = True,
    logprob_temperature: float = 1.0,
) -> GenerationResult:
    """Sample up to `max_new_tokens` (per call; an int or one per sequence) tokens for each prompt.

    Give either `prompts` (lists of token ids, any lengths >= 1) or the `state` of an earlier result to
    continue its unfinished sequences. See the module docstring for padding, stopping and continuing.
    """
    if (prompts is None) == (state is None):
        raise ValueError("generate: give exactly one of prompts or state")
    was_training = model.training
    model.eval()
    try:
        return _generate(model, prompts, max_new_tokens, temperature, top_k, top_p, stop_tokens, generator,
                         state, absorb, logprob_temperature)
    finally:
        model.train(was_training)


def _generate(
    model, prompts, max_new_tokens, temperature, top_k, top_p, stop_tokens, generator, state, absorb,
    logprob_temperature=1.0,
):
    p0 = next(model.parameters())
    device, dtype = p0.device, p0.dtype
    n_seq = len(prompts) if prompts is not None else len(state.tokens)
    budgets = [max_new_tokens] * n_seq if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != n_seq or min(budgets, default=1) < 1:
        raise ValueError(
            f"max_new_tokens must be >= 1, one int or one per sequence ({n_seq}), got {max_new_tokens}"
        )
    if prompts is not None and (n_seq == 0 or min(len(p) for p in prompts) < 1):
        raise ValueError("generate: every prompt needs at least one token")
    stop = set(stop_tokens)

    def pick_and_record(st: GenerationState, logits_BV: torch.Tensor) -> torch.Tensor:
        # log-softmax of the picked token only: logit − logsumexp (no (B, V) log-softmax tensor)
        logits = logits_BV.to(torch.promote_types(logits_BV.dtype, torch.float32))
        if logprob_temperature != 1.0:  # record the tempered distribution's log-probs and entropy
            logits = logits / logprob_temperature
        lse, best = ops.logsumexp_argmax(logits)
        tok = best if temperature == 0.0 else sample_next(logits_BV, temperature, top_k, top_p, generator)
        lp = logits.gather(-1, tok.unsqueeze(-1)).squeeze(-1) - lse
        # H = lse − Σ p·logit with p = exp(logit − lse)
        ent = lse - ((logits - lse.unsqueeze(-1)).exp() * logits).sum(-1)
        for r, t, x, h in zip(st.rows, tok.tolist(), lp.tolist(), ent.tolist()):
            st.tokens[r].append(t)
            st.logprobs[r].append(x)
            st.entropies[r].append(h)
        return tok

    if prompts is not None:
        capacity = max(len(p) for p in prompts) + max(budgets)
        cache, length, pad, logits = _prefill(model, prompts, capacity, device, dtype)
        st = GenerationState(
            cache,
            length,
            pad,
            list(range(n_seq)),
            torch.empty(0),
            [[] for _ in range(n_seq)],
            [[] for _ in range(n_seq)],
            [[] for _ in range(n_seq)],
            [False] * n_seq,
        )
        st.next_input = pick_and_record(st, logits)
        left = [b - 1 for b in budgets]  # tokens each active row may still add in this call
    else:
        st = GenerationState(
            state.cache,
            state.length,
            state.pad,
            list(state.rows),
            state.next_input,
            [list(t) for t in state.tokens],
            [list(x) for x in state.logprobs],
            [list(x) for x in state.entropies],
            list(state.finished),
        )
        left = [budgets[r] for r in st.rows]
        need = st.length + max(left, default=0)
        if need > st.cache.shape[2]:
            grown = st.cache.new_empty(*st.cache.shape[:2], need, st.cache.shape[3])
            grown[:, :, : st.length] = st.cache[:, :, : st.length]
            st.cache = grown

    parked: list[GenerationState] = []  # unfinished rows out of budget for this call, set aside
    mask = _slot_mask(st.pad, st.cache.shape[2], dtype)
    while st.rows:
        # bookkeeping on the Python side (the last token of each row is already in st.tokens): no tensor
        # ops and no device sync unless rows leave the batch
        done = [st.tokens[r][-1] in stop for r in st.rows]
        for r, d in zip(st.rows, done):
            st.finished[r] = st.finished[r] or d
        go = [not d and n > 0 for d, n in zip(done, left)]
        if not all(go):
            out = [j for j, (d, n) in enumerate(zip(done, left)) if not d and n <= 0]
            if out:
                parked.append(select_rows(st, torch.tensor(out, dtype=torch.long, device=device), st.length))
            keep = [j for j, g in enumerate(go) if g]
            st = select_rows(st, torch.tensor(keep, dtype=torch.long, device=device), trim=True)
            left = [left[j] for j in keep]
            mask = _slot_mask(st.pad, st.cache.shape[2], dtype)
            if not st.rows:
                break
        pos = (st.length - st.pad).unsqueeze(1)
        hidden = model.model.decode(
            st.next_input.unsqueeze(1), pos, st.cache, st.length, mask[:, None, : st.length + 1], absorb
        )
        st.length += 1
        st.next_input = pick_and_record(st, model.lm_head(hidden[:, -1]))
        left = [n - 1 for n in left]
    st = _merge([st] + parked)
    return GenerationResult(
        [list(t) for t in st.tokens],
        list(st.finished),
        [len(t) for t in st.tokens],
        [list(x) for x in st.logprobs],
        [list(x) for x in st.entropies],
        st,
    )


def select_rows(
    st: GenerationState, idx: torch.Tensor, upto: int | None = None, trim: bool = False
) -> GenerationState:
    """The rows `idx` of a state (sharing its token lists). `upto` copies only the filled slots;
    `trim` drops leading slots that are padding in every kept row."""
    cache = st.cache.index_select(1, idx) if upto is None else st.cache[:, :, :upto].index_select(1, idx)
    pad, length = st.pad.index_select(0, idx), st.length
    if trim and idx.numel():
        m = int(pad.min())
        if m:
            cache, pad, length = cache[:, :, m:], pad - m, length - m
    return GenerationState(
        cache,
        length,
        pad,
        [st.rows[j] for j in idx.tolist()],
        st.next_input.index_select(0, idx),
        st.tokens,
        st.logprobs,
        st.entropies,
        st.finished,
    )


def _merge(parts: list[GenerationState]) -> GenerationState:
    """One state from several (same token lists): rows are right-aligned to the longest by adding padding."""
    parts = [p for p in parts if p.rows] or parts[:1]
    if len(parts) == 1:
        return parts[0]
    length = max(p.length for p in parts)
    L, _, _, D = parts[0].cache.shape
    B = sum(len(p.rows) for p in parts)
    cache = parts[0].cache.new_zeros(L, B, length, D)
    pads, rows, nxt, b = [], [], [], 0
    for p in parts:
        n, shift = len(p.rows), length - p.length
        cache[:, b : b + n, shift:] = p.cache[:, :, : p.length]
        pads.append(p.pad + shift)
        rows += p.rows
        nxt.append(p.next_input)
        b += n
    first = parts[0]
    return GenerationState(
        cache, length, torch.cat(pads), rows, torch.cat(nxt), first.tokens, first.logprobs, first.entropies,
        first.finished,
    )
