"""k1.5 on arithmetic, CPU: what RL and long2short buy, and how fast rollouts are (a script, not a test).

    nice -n 5 python bench/rl_arith.py --out runs/bench-rl [--sft-steps N --rl-iterations N ...]

From one SFT checkpoint, same seeds: held-out greedy accuracy per difficulty before/after RL (and the
sampled accuracy at the RL temperature); long2short (merge, shortest rejection sampling, DPO, long2short
RL): mean length and accuracy vs the RL model; rollout throughput of our
latent-cache `generate` vs transformers' `DeepseekV3ForCausalLM.generate` on the same weights (greedy,
same batch, fixed length, median of repeats); partial rollouts (segment budget) vs none at the same
total token budget. Prints a table and writes DIR/bench.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from rl_errors import first_error
from timer import interleaved_medians

from muonext.models.generation import generate
from muonext.rl.config import PipelineConfig
from muonext.rl.pipeline import Pipeline
from muonext.rl.rollout import new_request, rollout
from muonext.rl.stages import sample_responses
from muonext.rl.tasks import product_steps
from muonext.rl.verify import verify


def throughput(p: Pipeline, batch: int, new_tokens: int, repeats: int) -> dict:
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    from muonext.models.hf import to_hf_state_dict

    model = p.load("rl").eval()
    prompts = [p.codec.prompt_ids(q.prompt) for q in p.held_out[:batch]]
    P = max(len(x) for x in prompts)
    prompts = [x + x[-1:] * (P - len(x)) for x in prompts]  # equal lengths: no padding differences
    hf = DeepseekV3ForCausalLM(DeepseekV3Config(**model.config.to_hf_config())).eval()
    sd = dict(to_hf_state_dict(model))
    missing, _unexpected = hf.load_state_dict(sd, strict=False)
    ids = torch.tensor(prompts)

    def run_ours():
        return generate(model, prompts, new_tokens, temperature=0.0, stop_tokens=[]).tokens

    @torch.no_grad()
    def run_hf():
        return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

    same = run_hf()[:, P:].tolist() == run_ours()
    # interleaved rounds: a change in the machine's load hits both alike
    t = interleaved_medians({"ours": run_ours, "hf": run_hf}, repeats=repeats)
    ours, theirs = t["ours"], t["hf"]
    n = batch * new_tokens
    return {"ours_tok_s": n / ours, "hf_tok_s": n / theirs, "speedup": theirs / ours, "greedy_equal": same,
            "hf_missing_keys": len(missing), "batch": batch, "new_tokens": new_tokens}


def partial_vs_full(p: Pipeline, n_traj: int, max_new: int, segment: int) -> dict:
    model = p.load("rl")
    probs = p.train_set[:n_traj]
    out = {}
    for name, seg in (("no_partial", 0), ("partial", segment)):
        gen = torch.Generator().manual_seed(0)
        reqs = [new_request(i, p.codec.prompt_ids(q.prompt), 0, 0) for i, q in enumerate(probs)]
        t0, tokens, iters = time.perf_counter(), 0, 0
        while reqs:
            trajs, st = rollout(model, reqs, eos_id=p.codec.eos_id, max_new_tokens=max_new, segment_tokens=seg,
                                generator=gen)
            tokens += st.new_tokens
            iters += 1
            reqs = [t.to_partial() for t in trajs if not t.done]
        dt = time.perf_counter() - t0
        out[name] = {"tokens": tokens, "seconds": dt, "tok_s": tokens / dt, "iterations": iters,
                     "per_iteration_tokens_max": segment * n_traj if seg else max_new * n_traj}
    return out


def product_strategies(p: Pipeline, stages: tuple[str, ...]) -> dict:
    """Greedy, on the held-out problems of the hardest level: the share of product steps (with a
    two-digit operand) each model works by long multiplication, and its accuracy on the problems where it
    works them all and where it writes them all in one line. RL's gain on that level is mostly the
    choice of strategy (tasks.py). Also where the wrong responses first go wrong (rl_errors.py)."""
    hardest = max(q.difficulty for q in p.held_out)
    probs = [q for q in p.held_out if q.difficulty == hardest]
    out = {}
    for stage in stages:
        responses = sample_responses(p.load(stage).eval(), probs, p.codec, 1, p.eval_max_new, temperature=0.0)
        worked = one_line = 0
        right = {"long": [], "one_line": []}
        errors: Counter[str] = Counter()
        for q, (toks,) in zip(probs, responses):
            text = p.codec.decode(toks)
            w, o = product_steps(text)
            worked, one_line = worked + w, one_line + o
            ok = verify(text, q.answer)
            if not ok:
                errors[first_error(text, q.answer)] += 1
            if w or o:
                kind = "long" if not o else "one_line" if not w else "mixed"
                right.setdefault(kind, []).append(ok)
        out[stage] = {"difficulty": hardest, "long_share": worked / max(1, worked + one_line),
                      **{f"{k}_problems": len(v) for k, v in right.items()},
                      **{f"{k}_accuracy": sum(v) / len(v) for k, v in right.items() if v},
                      "first_errors": dict(errors.most_common())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-rl")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--sft-steps", type=int)
    ap.add_argument("--rl-iterations", type=int)
    ap.add_argument("--n-eval", type=int)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="{}", help="JSON overrides of the preset's PipelineConfig "
                                                   "(e.g. model_overrides)")
    ap.add_argument("--segment-tokens", type=int, default=64,
                    help="partial-rollout segment for the with/without comparison when the preset has none")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    over = {**json.loads(args.config), "seed": args.seed}
    over["rl"] = dict(over.get("rl", {}))
    if args.sft_steps is not None:
        over["sft_steps"] = args.sft_steps
    if args.rl_iterations is not None:
        over["rl"]["iterations"] = args.rl_iterations
    if args.n_eval is not None:
        over["n_eval_per_difficulty"] = args.n_eval
    cfg = PipelineConfig.preset(args.preset, **over)
    t0 = time.perf_counter()
    p = Pipeline(cfg, args.out, progress=True)
    p.run()
    total = time.perf_counter() - t0
    res = json.loads((Path(args.out) / "eval" / "results.json").read_text())
    result = {"config": cfg.to_dict(), "seconds": total, "eval": res,
              "throughput": throughput(p, batch=16, new_tokens=64, repeats=9),
              "partial": partial_vs_full(p, n_traj=32, max_new=cfg.rl.max_new_tokens,
                                         segment=cfg.rl.segment_tokens or args.segment_tokens),
              "products": product_strategies(p, ("sft", "rl"))}
    (Path(args.out) / "bench.json").write_text(json.dumps(result, indent=1))
    levels = [k for k in res["sft"] if k != "all"]
    print(f"pipeline wall time {total:.0f} s")
    print("| model | " + " | ".join(f"acc d{d}" for d in levels) + " | acc all | mean len | sampled acc | sampled len |")
    print("|---" * (len(levels) + 5) + "|")
    for m, r in res.items():
        sampled = " / ".join(f"{r[d]['sampled_accuracy']:.3f}" for d in levels if "sampled_accuracy" in r[d])
        print(f"| {m} | " + " | ".join(f"{r[d]['accuracy']:.3f}" for d in levels)
              + f" | {r['all']['accuracy']:.3f} | {r['all']['mean_length']:.1f} | {sampled}"
              + f" | {r['all'].get('sampled_mean_length', float('nan')):.1f} |")
    if "rl" in res:
        base = res["rl"]["all"]
        for m in ("short_sft", "merge", "shortest_sft", "dpo", "l2s_rl"):
            if m in res:
                r = res[m]["all"]
                line = (f"long2short {m} vs rl: greedy length {100 * (r['mean_length'] / base['mean_length'] - 1):+.1f}%, "
                        f"accuracy {100 * (r['accuracy'] - base['accuracy']):+.1f} points")
                if "sampled_mean_length" in r and "sampled_mean_length" in base:
                    line += (f"; sampled length {100 * (r['sampled_mean_length'] / base['sampled_mean_length'] - 1):+.1f}%, "
                             f"accuracy {100 * (r['sampled_accuracy'] - base['sampled_accuracy']):+.1f} points")
                print(line)
    for m, r in result["products"].items():
        print(f"{m}, d{r['difficulty']} products: {100 * r['long_share']:.0f}% worked by long multiplication; "
              f"accuracy where all are {r.get('long_accuracy', float('nan')):.3f} ({r['long_problems']} problems), "
              f"where none are {r.get('one_line_accuracy', float('nan')):.3f} ({r['one_line_problems']}); "
              "first errors: " + ", ".join(f"{k} {n}" for k, n in r["first_errors"].items()))
    t = result["throughput"]
    print(f"rollout tok/s: ours {t['ours_tok_s']:.0f}, transformers {t['hf_tok_s']:.0f} "
          f"({t['speedup']:.2f}x), greedy equal: {t['greedy_equal']}")
    for k, v in result["partial"].items():
        print(f"{k}: {v['tokens']} tokens in {v['seconds']:.2f} s = {v['tok_s']:.0f} tok/s over {v['iterations']} iterations")


if __name__ == "__main__":
    main()
