"""Partial rollouts: segments across iterations equal one generation; repeat detection; the buffer's
checkpoint round trip."""

import pytest
import torch

from muonext.models import MoonlightConfig, MoonlightForCausalLM
from muonext.models.generation import generate
from muonext.rl import RepeatDetector, ReplayBuffer
from muonext.rl.rollout import new_request, rollout
from muonext.rl.text_codec import EOS, CharCodec


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed=0, init=0.3):
    torch.manual_seed(seed)
    # a large init spreads the logits so greedy decoding has no near-ties between prefill and decode
    cfg = MoonlightConfig.preset("debug", vocab_size=CharCodec().vocab_size, initializer_range=init)
    return MoonlightForCausalLM(cfg).eval()


def test_codec_round_trip():
    c = CharCodec()
    text = "What is (12 - 3) * 4?\nAnswer: 36"
    assert c.decode(c.encode(text)) == text
    assert c.decode([*c.encode("12"), EOS, *c.encode("3")]) == "12"
    with pytest.raises(ValueError, match="position 1"):
        c.encode("a€")


@pytest.mark.parametrize("segment", [5, 8, 13])
def test_partial_rollout_equals_one_shot(segment):
    model, c = _model(), CharCodec()
    prompts = [c.prompt_ids("What is 3 + 4?"), c.prompt_ids("What is (12 - 3) * 45?"), c.prompt_ids("Hi")]
    total = 40
    once = generate(model, prompts, total, temperature=0.0, stop_tokens=[10**6])  # never stops
    requests = [new_request(i, p, 0, 0) for i, p in enumerate(prompts)]
    buf = ReplayBuffer(capacity=16)
    for it in range(100):
        trajs, _ = rollout(model, requests, eos_id=10**6, max_new_tokens=total, segment_tokens=segment,
                           temperature=0.0, check_every=3)
        for t in trajs:
            assert len(t.tokens) - t.segment_start <= segment, f"{segment=} {it=}"
            if not t.done:
                buf.add(t.to_partial())
        done = [t for t in trajs if t.done]
        if not buf:
            break
        requests, _ = buf.take(len(buf), it + 1)
    assert all(t.status == "truncated" for t in done)
    assert {t.prompt_id: t.tokens for t in done} == dict(enumerate(once.tokens)), f"{segment=}"
    assert done[0].segments == -(-total // segment)


def test_finished_trajectory_stops_at_eos():
    model, c = _model(), CharCodec()
    prompt = c.prompt_ids("What is 3 + 4?")
    ref = generate(model, [prompt], 30, temperature=0.0).tokens[0]
    eos = ref[11]  # pretend the 12th greedy token is the stop token
    first = ref.index(eos)
    trajs, _stats = rollout(model, [new_request(0, prompt, 0, 0)], eos_id=eos, max_new_tokens=30,
                           segment_tokens=4, temperature=0.0)
    req = trajs[0]
    while not req.done:
        trajs, _ = rollout(model, [req.to_partial()], eos_id=eos, max_new_tokens=30, segment_tokens=4,
                           temperature=0.0)
        req = trajs[0]
    assert req.status == "finished" and req.tokens == ref[: first + 1]


def test_repeat_detection_ends_trajectory_early():
    # a degenerate policy: the final norm is zeroed, so every logit is 0 and greedy emits token 0 forever
    model, c = _model(), CharCodec()
    with torch.no_grad():
        model.model.norm.weight.zero_()
    det = RepeatDetector(min_repeats=4, min_span=8, penalty=-1.0)
    trajs, _ = rollout(model, [new_request(0, c.prompt_ids("x"), 0, 0)], eos_id=EOS, max_new_tokens=200,
                       temperature=0.0, repeat=det, check_every=4)
    t = trajs[0]
    assert t.status == "repeat", t.status
    assert len(t.tokens) <= 12, len(t.tokens)


def test_replay_buffer_survives_checkpoint(tmp_path):
    from muonext.train.checkpoint import load_checkpoint, save_checkpoint

    model, c = _model(), CharCodec()
    reqs = [new_request(i, c.prompt_ids(f"What is {i} + 1?"), 3, i) for i in range(4)]
    trajs, _ = rollout(model, reqs, eos_id=10**6, max_new_tokens=50, segment_tokens=7, temperature=0.0)
    buf = ReplayBuffer(capacity=8, max_age=2)
    for t in trajs:
        buf.add(t.to_partial())
    path = save_checkpoint(tmp_path, 1, model_state=model.state_dict(), rank_state={},
                           shared={"buffer": buf.state_dict()})
    back = ReplayBuffer(capacity=1)
    back.load_state_dict(load_checkpoint(path).shared["buffer"])
    assert list(back) == list(buf) and back.capacity == 8 and back.max_age == 2
    # continuing from the restored buffer equals continuing from the original
    a, _ = rollout(model, list(buf), eos_id=10**6, max_new_tokens=50, segment_tokens=7, temperature=0.0)
    b, _ = rollout(model, list(back), eos_id=10**6, max_new_tokens=50, segment_tokens=7, temperature=0.0)
    assert [t.tokens for t in a] == [t.tokens for t in b]
    assert all(len(t.tokens) == 14 and t.segments == 2 for t in b)
