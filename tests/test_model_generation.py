"""Generation with the latent cache: equal to recomputation without a cache, continuation, stopping,
per-sequence budgets, sampling filters. float64 so that greedy choices cannot flip on rounding."""

import random

import pytest
import torch

from muonext.models import MoonlightConfig, MoonlightForCausalLM, generate, sample_next

PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9], [10, 11, 12], [5] * 12, [300, 2]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = MoonlightConfig.preset(
        "debug", rope_scaling={"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 8}
    )
    m = MoonlightForCausalLM(cfg).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(5.0)  # peaked distributions: varied, well-separated greedy choices
    return m


def greedy_without_cache(model, prompt, n):
    seq, out = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            t = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            out.append(t)
            seq.append(t)
    return out


@pytest.fixture(scope="module")
def reference(model):
    return [greedy_without_cache(model, p, 12) for p in PROMPTS]


@pytest.mark.parametrize("absorb", [True, False])
def test_cached_greedy_equals_recomputation(model, reference, absorb):
    r = generate(model, PROMPTS, 12, temperature=0.0, absorb=absorb)
    assert r.tokens == reference, f"{absorb=}"
    assert r.lengths == [12] * len(PROMPTS) and r.finished == [False] * len(PROMPTS)
    assert len(set(map(tuple, reference))) == len(PROMPTS)


def test_continuing_equals_generating_at_once(model, reference):
    r1 = generate(model, PROMPTS, 5, temperature=0.0)
    r2 = generate(model, state=r1.state, max_new_tokens=7, temperature=0.0)
    assert r2.tokens == reference
    # uneven budgets per sequence, continued in three calls
    r1 = generate(model, PROMPTS, [1, 4, 7, 2, 12], temperature=0.0)
    assert r1.lengths == [1, 4, 7, 2, 12]
    r2 = generate(model, state=r1.state, max_new_tokens=[3, 7, 1, 9, 1], temperature=0.0)
    r3 = generate(model, state=r2.state, max_new_tokens=[8, 1, 4, 1, 1], temperature=0.0)
    assert r3.tokens[:4] == reference[:4]
    assert r3.tokens[4][:12] == reference[4]


def test_reprefill_from_tokens_equals_continuing(model, reference):
    r1 = generate(model, PROMPTS, 5, temperature=0.0)
    again = generate(model, [p + t for p, t in zip(PROMPTS, r1.tokens)], 7, temperature=0.0)
    assert [a + b for a, b in zip(r1.tokens, again.tokens)] == reference


def test_stop_tokens_finish_rows(model, reference):
    stop = reference[0][3]
    r = generate(model, PROMPTS, 12, temperature=0.0, stop_tokens=[stop])
    for toks, ref, fin in zip(r.tokens, reference, r.finished):
        if stop in ref:
            cut = ref.index(stop) + 1
            assert toks == ref[:cut] and fin
        else:
            assert toks == ref and not fin
    assert r.finished[0] and r.lengths[0] == 4
    # finished rows stay finished; the others continue
    r2 = generate(model, state=r.state, max_new_tokens=3, temperature=0.0, stop_tokens=[stop])
    assert r2.tokens[0] == r.tokens[0]


def test_logprobs_are_model_logprobs(model):
    r = generate(model, PROMPTS[:2], 4, temperature=1.0, generator=torch.Generator().manual_seed(0))
    for p, toks, lps in zip(PROMPTS[:2], r.tokens, r.logprobs):
        with torch.no_grad():
            logits = model(torch.tensor([p + toks])).logits[0, len(p) - 1 : -1]
        expect = torch.log_softmax(logits, -1).gather(-1, torch.tensor(toks).unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(torch.tensor(lps, dtype=torch.float64), expect)


def test_entropies_are_the_model_distributions_entropy_at_temperature_one(model):
    # sampled at 0.7 and continued from the state (rows leave the batch on the way): every token still
    # carries the entropy of the untempered distribution it was drawn from
    r = generate(model, PROMPTS, [3, 5, 2, 4, 5], temperature=0.7, generator=torch.Generator().manual_seed(3))
    r = generate(model, state=r.state, max_new_tokens=3, temperature=0.7, generator=torch.Generator().manual_seed(4))
    for p, toks, ents in zip(PROMPTS, r.tokens, r.entropies):
        assert len(ents) == len(toks)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p + toks])).logits[0, len(p) - 1 : -1], -1)
        torch.testing.assert_close(torch.tensor(ents, dtype=torch.float64), -(logp.exp() * logp).sum(-1))


def test_sampling_is_seeded_and_filters_work(model, reference):
    a = generate(model, PROMPTS, 6, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(1))
    b = generate(model, PROMPTS, 6, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(1))
    assert a.tokens == b.tokens
    top1 = generate(model, PROMPTS, 6, temperature=0.7, top_k=1, generator=torch.Generator().manual_seed(2))
    assert [t[:6] for t in reference] == top1.tokens
    tiny_p = generate(
        model, PROMPTS, 6, temperature=1.0, top_p=1e-6, generator=torch.Generator().manual_seed(2)
    )
    assert [t[:6] for t in reference] == tiny_p.tokens


def test_sample_next_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, top_k=2, generator=g).tolist()) == {2, 3}
    # probs ~ [.03, .09, .24, .64]: top_p 0.8 keeps {3, 2}
    assert set(sample_next(logits, top_p=0.8, generator=g).tolist()) == {2, 3}
    assert set(sample_next(logits, top_p=0.5, generator=g).tolist()) == {3}
    assert sample_next(logits, temperature=0.0).unique().tolist() == [3]


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, PROMPTS, 0)
    with pytest.raises(ValueError, match="prompt"):
        generate(model, [[1], []], 3)
    with pytest.raises(ValueError, match="exactly one"):
        generate(model)


def test_random_budgets_stops_and_continuations_match_recomputation(model):
    """Random batches, stop tokens and per-sequence budgets split over three calls (rows finish, run out
    of budget, are set aside and merged back) all give the no-cache greedy tokens."""
    rng = random.Random(0)
    for trial in range(8):
        prompts = [[rng.randrange(512) for _ in range(rng.randint(1, 10))] for _ in range(rng.randint(1, 6))]
        plain = [greedy_without_cache(model, p, 10) for p in prompts]
        stop = set(rng.sample(sorted({t for r in plain for t in r}), k=rng.randint(0, 3)))
        expect = [r[: next((i + 1 for i, t in enumerate(r) if t in stop), len(r))] for r in plain]
        splits = []
        for _ in prompts:
            a = rng.randint(1, 8)
            b = rng.randint(1, 9 - a)
            splits.append([a, b, 10 - a - b])
        r = generate(model, prompts, [s[0] for s in splits], temperature=0.0, stop_tokens=stop)
        for c in (1, 2):
            r = generate(
                model, state=r.state, max_new_tokens=[s[c] for s in splits], temperature=0.0, stop_tokens=stop
            )
        assert r.tokens == expect, f"{trial=} {prompts=} {stop=} {splits=}"
        assert r.finished == [t[-1] in stop for t in expect], f"{trial=}"
