"""Moonlight model throughput: muonext vs transformers' DeepseekV3ForCausalLM, same weights, same run.

    .venv/bin/python bench/model_throughput.py [--preset tiny] [--threads 2]

Measures (fp32, CPU unless --device says otherwise), median of --repeats after --warmup:
* training tokens/s: forward + backward of a (batch, seq) LM loss;
* generation tokens/s: greedy, --gen-batch prompts of mixed lengths, --new-tokens new tokens each;
* KV-cache bytes per token (all layers): our latent cache vs transformers' DynamicCache.
The baseline is the faster of transformers' "eager" and "sdpa" attention. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from muonext.models import MoonlightConfig, MoonlightForCausalLM, generate
from muonext.models.hf import to_hf_state_dict


def timed(fns: dict, warmup: int, repeats: int) -> dict:
    """Median seconds per call of each fn; repeats are interleaved (a, b, c, a, b, c, ...) so that load
    from other processes on a shared machine hits every contestant alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def hf_model(ours: MoonlightForCausalLM, attn: str):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    cfg = DeepseekV3Config(**{k: v for k, v in ours.config.to_hf_config().items() if k != "architectures"})
    model = DeepseekV3ForCausalLM._from_config(cfg, attn_implementation=attn)
    missing, unexpected = model.load_state_dict(dict(to_hf_state_dict(ours)), strict=False)
    assert not unexpected and not [k for k in missing if "inv_freq" not in k], (missing, unexpected)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--gen-batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gen-repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    ours = MoonlightForCausalLM(MoonlightConfig.preset(args.preset))
    cfg = ours.config
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq))
    g = torch.Generator().manual_seed(1)
    prompts = [
        torch.randint(0, cfg.vocab_size, (int(n),), generator=g).tolist()
        for n in torch.randint(8, 65, (args.gen_batch,), generator=g)
    ]
    rows = []  # (measure, system, value)

    # ------------------------------------------------------------ training
    def train_step(model):
        model.train()
        model.zero_grad(set_to_none=True)
        out = model(ids, labels=ids)
        out.loss.backward()

    train_tokens = args.batch * args.seq
    baselines = {attn: hf_model(ours, attn) for attn in ("eager", "sdpa")}
    fns = {"muonext": lambda: train_step(ours)}
    fns.update({f"transformers ({attn})": (lambda hf=hf: train_step(hf)) for attn, hf in baselines.items()})
    for name, t in timed(fns, args.warmup, args.repeats).items():
        rows.append(("training tok/s", name, train_tokens / t))

    # ------------------------------------------------------------ generation
    gen_tokens = args.gen_batch * args.new_tokens
    ours.eval()
    pad = 0
    width = max(len(p) for p in prompts)
    hf_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    hf_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    def hf_gen(hf):
        with torch.inference_mode():
            return hf.generate(
                hf_ids,
                attention_mask=hf_mask,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=False,
                pad_token_id=pad,
                return_dict_in_generate=True,
            )

    fns = {
        f"muonext ({'absorbed' if absorb else 're-expanded'})": (
            lambda absorb=absorb: generate(ours, prompts, args.new_tokens, temperature=0.0, absorb=absorb)
        )
        for absorb in (True, False)
    }
    for attn, hf in baselines.items():
        hf.eval()
        fns[f"transformers ({attn})"] = lambda hf=hf: hf_gen(hf)
    for name, t in timed(fns, 1, args.gen_repeats).items():
        rows.append(("generation tok/s", name, gen_tokens / t))
    out = hf_gen(baselines["eager"])
    cache = out.past_key_values
    hf_cache_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers) / (
        args.gen_batch * cache.get_seq_length()
    )
    ours_out = generate(ours, prompts, args.new_tokens, temperature=0.0)
    same = sum(a == b[width:].tolist() for a, b in zip(ours_out.tokens, out.sequences))

    # ------------------------------------------------------------ cache size
    res = generate(ours, prompts, 4, temperature=0.0)
    c = res.state.cache
    ours_cache_bytes = c.element_size() * c.shape[0] * c.shape[3]
    rows.append(("KV-cache bytes/token", "muonext", ours_cache_bytes))
    rows.append(("KV-cache bytes/token", "transformers", hf_cache_bytes))

    # ------------------------------------------------------------ table
    print(
        f"preset={args.preset} threads={args.threads} train batch={args.batch}x{args.seq} "
        f"gen batch={args.gen_batch} new={args.new_tokens} torch={torch.__version__}"
    )
    print(f"greedy generations identical to transformers': {same}/{args.gen_batch}")
    print("| measure | system | value | × baseline |")
    print("|---|---|---|---|")
    for what in dict.fromkeys(r[0] for r in rows):
        group = [r for r in rows if r[0] == what]
        hf_vals = [v for _, s, v in group if s.startswith("transformers")]
        if what.startswith("KV"):
            base = min(hf_vals)
            for _, s, v in group:
                print(f"| {what} | {s} | {v:,.0f} | {base / v:.2f}× smaller |")
        else:
            base = max(hf_vals)
            for _, s, v in group:
                print(f"| {what} | {s} | {v:,.1f} | {v / base:.2f}× |")


if __name__ == "__main__":
    main()
