"""Muon vs AdamW at small scale: the claims of "Muon is Scalable for LLM Training" (arXiv 2502.16982).

    .venv/bin/python bench/muon_vs_adamw.py            # full budget (two model sizes, ~25 min on 2 cores)
    .venv/bin/python bench/muon_vs_adamw.py --quick    # smoke test (< 1 min)

Every run trains a Moonlight model (MLA + MoE) with the library's Trainer on the default corpus (the
Python standard library), same seed and data order for every run; validation loss is on the held-out split.

1. Compute efficiency: AdamW over an lr sweep (best = lowest final validation loss), then Muon at AdamW's
   best lr and weight decay, not retuned ("match_rms_adamw"). Reported: the tokens Muon needs to reach
   AdamW's final validation loss (linear interpolation between evaluations) as a fraction of AdamW's,
   and, as a second estimate, Muon runs with a proportionally shorter schedule (their own cosine).
   Checks: the best AdamW/Muon pair again with other seeds (debug), Muon at 2× AdamW's lr (--muon-lr-mults).
2. Weight decay: Muon with and without it — weight RMS and layer-output RMS over training.
3. Update RMS per matrix shape: "match_rms_adamw" (≈ 0.2) vs "original" vs AdamW (Table 1 analogue).
4. Normalised SVD entropy per matrix kind at the end, Muon vs AdamW (Figure 4 analogue).

Runs go to --out (one directory each: run.json, metrics.jsonl, bench.json); an identical run already
there is reused unless --fresh. Tables are printed and written to <out>/tables.md, numbers to
<out>/summary.json, figures to --figures.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from muon_vs_adamw_run import load_if_same, run

# Per model size: the TrainConfig preset, its overrides, the AdamW lr grid and a relative cost per step.
FULL = {
    "debug": {"preset": "debug", "cost": 0.06, "adamw_lrs": [2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2],
              "wd_long_steps": 3000,  # a longer Muon pair (with / without weight decay) for part 2
              "noise_seeds": [1, 2],  # AdamW (best lr) and Muon again with these seeds: the seed spread
              "overrides": {"batch_size": 16, "seq_len": 64, "max_steps": 800, "warmup_steps": 30,
                            "eval_every": 25, "eval_batches": 12, "max_corpus_bytes": 8_000_000}},
    "tiny": {"preset": "tiny", "cost": 1.0, "adamw_lrs": [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2],
             "overrides": {"max_steps": 300, "warmup_steps": 20, "eval_every": 10, "eval_batches": 4}},
}
QUICK = {
    "debug": {"preset": "debug", "cost": 0.06, "adamw_lrs": [4e-3, 1.6e-2], "wd_long_steps": 60, "noise_seeds": [1],
              "overrides": {"batch_size": 8, "seq_len": 64, "max_steps": 40, "warmup_steps": 4,
                            "eval_every": 5, "eval_batches": 4}},
}
COMMON = {"progress": False, "export": False, "plots": False, "sample_tokens": 0, "save_every": 0}


# ---------------------------------------------------------------------------------------------- plan
def make_spec(args, size: str, plan: dict, tag: str, steps: int | None = None, **overrides) -> dict:
    o = {**COMMON, **plan["overrides"], "seed": args.seed, "weight_decay": args.wd,
         "cache_dir": str(ROOT / "runs" / ".cache"), **overrides}
    o["max_steps"] = steps or max(1, round(o["max_steps"] * args.steps_scale))
    o["out"] = str(Path(args.out) / f"{size}-{tag}")
    adjust = o.pop("adjust_lr", None)
    return {"tag": f"{size}-{tag}", "size": size, "preset": plan["preset"], "overrides": o, "adjust_lr": adjust,
            "threads": args.threads, "log_every": args.log_every, "cost": plan["cost"] * o["max_steps"]}


def phase1(args, plans) -> list[dict]:
    return [make_spec(args, size, plan, f"adamw-lr{lr:g}", optimizer="adamw", lr=lr)
            for size, plan in plans.items() for lr in plan["adamw_lrs"]]


def phase2(args, size: str, plan: dict, lr: float) -> list[dict]:
    full = max(1, round(plan["overrides"]["max_steps"] * args.steps_scale))
    specs = [make_spec(args, size, plan, "muon", optimizer="muon", lr=lr),
             make_spec(args, size, plan, "muon-nowd", optimizer="muon", lr=lr, weight_decay=0.0),
             make_spec(args, size, plan, "muon-original", optimizer="muon", lr=lr, adjust_lr="original")]
    if plan.get("wd_long_steps"):
        long = max(2, round(plan["wd_long_steps"] * args.steps_scale))
        eval_every = max(1, long // 40)
        specs += [make_spec(args, size, plan, "muon-long", steps=long, optimizer="muon", lr=lr, eval_every=eval_every),
                  make_spec(args, size, plan, "muon-nowd-long", steps=long, optimizer="muon", lr=lr,
                            weight_decay=0.0, eval_every=eval_every)]
    for mult in args.muon_lr_mults:  # sensitivity check, not the paper's protocol (which keeps AdamW's lr)
        specs.append(make_spec(args, size, plan, f"muon-lr{mult:g}x", optimizer="muon", lr=lr * mult))
    for seed in plan.get("noise_seeds", []):
        specs += [make_spec(args, size, plan, f"adamw-seed{seed}", optimizer="adamw", lr=lr, seed=seed),
                  make_spec(args, size, plan, f"muon-seed{seed}", optimizer="muon", lr=lr, seed=seed)]
    for f in args.short_fracs:
        specs.append(make_spec(args, size, plan, f"muon-short{f:g}", steps=max(2, round(full * f)),
                               optimizer="muon", lr=lr))
    return specs


def execute(args, plans) -> dict[str, dict]:
    """Phase 1 (AdamW sweeps), then per size as soon as its sweep is done, phase 2 (Muon runs at the
    best AdamW lr); longest jobs first on a pool of --workers processes."""
    results: dict[str, dict] = {}
    pending_sizes = {size: len(plan["adamw_lrs"]) for size, plan in plans.items()}
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
        running = {}

        def submit(specs):
            for spec in sorted(specs, key=lambda s: -s["cost"]):
                old = None if args.fresh else load_if_same(spec)
                if old is not None:
                    finish(spec, old, reused=True)
                else:
                    running[pool.submit(run, spec)] = spec

        def finish(spec, res, reused=False):
            results[spec["tag"]] = res
            took = "reused" if reused else f"{res['total_seconds']:.0f} s"
            print(f"[{time.perf_counter() - t0:7.1f}s] {spec['tag']:<28} final val {res['final_val_loss']:.4f} "
                  f"({took})", flush=True)
            size = spec["size"]
            if spec["overrides"]["optimizer"] == "adamw":
                pending_sizes[size] -= 1
                if pending_sizes[size] == 0:
                    lr = best_adamw(results, size)[0]
                    print(f"{size}: best AdamW lr {lr:g}; starting the Muon runs", flush=True)
                    submit(phase2(args, size, plans[size], lr))

        submit(phase1(args, plans))
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                spec = running.pop(fut)
                finish(spec, fut.result())
    return results


# ---------------------------------------------------------------------------------------------- analysis
def adamw_runs(results: dict, size: str) -> list[tuple[float, dict]]:
    rs = [(r["spec"]["overrides"]["lr"], r) for r in results.values()
          if r["spec"]["size"] == size and r["spec"]["tag"].startswith(f"{size}-adamw-lr")]
    return sorted(rs, key=lambda x: x[0])


def best_adamw(results: dict, size: str) -> tuple[float, dict]:
    return min(adamw_runs(results, size), key=lambda x: x[1]["final_val_loss"])


def tokens_to_reach(evals: list[dict], target: float) -> float | None:
    """First crossing of `target` on the validation curve, interpolated linearly in tokens (None: never)."""
    for i, e in enumerate(evals):
        if e["val_loss"] <= target:
            if i == 0:
                return 0.0
            a, b = evals[i - 1], e
            return a["tokens"] + (a["val_loss"] - target) / (a["val_loss"] - b["val_loss"]) * (b["tokens"] - a["tokens"])
    return None


def fmt(x, spec=".4f") -> str:
    return "—" if x is None else format(x, spec)


def analyse(results: dict, plans: dict) -> tuple[dict, str]:
    summary, md = {}, []
    for size in plans:
        lr_best, ad = best_adamw(results, size)
        target = ad["final_val_loss"]
        ad_tokens = tokens_to_reach(ad["evals"], target)
        mu = results[f"{size}-muon"]
        mu_tokens = tokens_to_reach(mu["evals"], target)
        s = {"params": ad["parameters"], "tokens_per_run": ad["max_steps"] * ad["tokens_per_step"],
             "adamw_best_lr": lr_best, "adamw_final": target, "adamw_tokens": ad_tokens,
             "muon_final": mu["final_val_loss"], "muon_tokens": mu_tokens,
             "ratio": None if mu_tokens is None else mu_tokens / ad_tokens,
             "sweep": {f"{lr:g}": r["final_val_loss"] for lr, r in adamw_runs(results, size)}}
        lrs = [lr for lr, _ in adamw_runs(results, size)]
        s["best_at_grid_edge"] = lr_best in (lrs[0], lrs[-1])
        s["short"] = {}
        for tag, r in results.items():
            if tag.startswith(f"{size}-muon-short"):
                s["short"][tag] = {"tokens": r["max_steps"] * r["tokens_per_step"], "final": r["final_val_loss"]}
        summary[size] = s

    # 1. compute efficiency
    md.append("### 1. Compute efficiency (tokens to reach AdamW's final validation loss)\n")
    for size, s in summary.items():
        md.append(f"AdamW lr sweep, {size} ({s['params']:,} parameters, {s['tokens_per_run']:,} tokens per run, "
                  f"weight decay {results[f'{size}-muon']['spec']['overrides']['weight_decay']:g}):\n")
        md.append("| lr | final val loss | × best |\n|---|---|---|")
        for lr, v in s["sweep"].items():
            md.append(f"| {lr} | {v:.4f} | {v / s['adamw_final']:.3f} |")
        md.append("")
    md.append("| size | AdamW best lr | AdamW final val | Muon final val (same lr, wd) | AdamW tokens to it | "
              "Muon tokens to it | × AdamW tokens |\n|---|---|---|---|---|---|---|")
    for size, s in summary.items():
        md.append(f"| {size} | {s['adamw_best_lr']:g}{' (grid edge)' if s['best_at_grid_edge'] else ''} | "
                  f"{s['adamw_final']:.4f} | {s['muon_final']:.4f} | {fmt(s['adamw_tokens'], ',.0f')} | "
                  f"{fmt(s['muon_tokens'], ',.0f')} | {fmt(s['ratio'], '.2f')} |")
    md.append("")
    if any(s["short"] for s in summary.values()):
        md.append("Muon with a shorter run (its own warm-up + cosine schedule, same lr):\n")
        md.append("| size | run | tokens | × AdamW tokens | final val | − AdamW final |\n|---|---|---|---|---|---|")
        for size, s in summary.items():
            for tag, r in sorted(s["short"].items()):
                md.append(f"| {size} | {tag} | {r['tokens']:,} | {r['tokens'] / s['tokens_per_run']:.2f} | "
                          f"{r['final']:.4f} | {r['final'] - s['adamw_final']:+.4f} |")
        md.append("")

    mults = [(size, tag) for size in plans for tag in sorted(results) if tag.startswith(f"{size}-muon-lr")]
    if mults:
        md.append("Sensitivity check (not the paper's protocol, which keeps AdamW's lr): Muon at a multiple of "
                  "AdamW's best lr:\n")
        md.append("| size | run | Muon lr | final val | − AdamW final | Muon tokens to AdamW final | × AdamW tokens |\n"
                  "|---|---|---|---|---|---|---|")
        for size, tag in mults:
            s, r = summary[size], results[tag]
            t_m = tokens_to_reach(r["evals"], s["adamw_final"])
            ratio = None if t_m is None else t_m / s["adamw_tokens"]
            s.setdefault("lr_mults", {})[tag] = {"lr": r["spec"]["overrides"]["lr"], "final": r["final_val_loss"],
                                                 "tokens": t_m, "ratio": ratio}
            md.append(f"| {size} | {tag} | {r['spec']['overrides']['lr']:g} | {r['final_val_loss']:.4f} | "
                      f"{r['final_val_loss'] - s['adamw_final']:+.4f} | {fmt(t_m, ',.0f')} | {fmt(ratio, '.2f')} |")
        md.append("")
    seeds = [(size, p["noise_seeds"]) for size, p in plans.items() if p.get("noise_seeds")]
    if seeds:
        md.append("Seed spread (AdamW at its best lr and Muon, both re-run with other seeds; each seed's "
                  "Muon run against that seed's AdamW final loss):\n")
        md.append("| size | seed | AdamW final val | Muon final val | Muon − AdamW | Muon tokens to AdamW final | "
                  "× AdamW tokens |\n|---|---|---|---|---|---|---|")
        for size, extra in seeds:
            s = summary[size]
            s["seeds"] = {}
            for seed in [None] + list(extra):
                sfx = "" if seed is None else f"-seed{seed}"
                a = results[f"{size}-adamw-lr{s['adamw_best_lr']:g}"] if seed is None else results[f"{size}-adamw{sfx}"]
                m = results[f"{size}-muon{sfx}"]
                t_a = tokens_to_reach(a["evals"], a["final_val_loss"])
                t_m = tokens_to_reach(m["evals"], a["final_val_loss"])
                ratio = None if t_m is None else t_m / t_a
                s["seeds"][str(a["spec"]["overrides"]["seed"])] = {"adamw": a["final_val_loss"], "muon": m["final_val_loss"],
                                                                   "ratio": ratio}
                md.append(f"| {size} | {a['spec']['overrides']['seed']} | {a['final_val_loss']:.4f} | "
                          f"{m['final_val_loss']:.4f} | {m['final_val_loss'] - a['final_val_loss']:+.4f} | "
                          f"{fmt(t_m, ',.0f')} | {fmt(ratio, '.2f')} |")
        md.append("")

    # 2. weight decay
    md.append("### 2. Weight decay (Muon, same lr)\n")
    md.append("| size | run | final val | weight RMS, hidden matrices | × with wd | layer-output RMS, mean over layers "
              "| × with wd | layer-output RMS, last layer |\n|---|---|---|---|---|---|---|---|")
    for size, suffix in wd_pairs(results, plans):
        base = results[f"{size}-muon{suffix}"]["evals"][-1]
        for tag in (f"muon{suffix}", f"muon-nowd{suffix}"):
            r = results[f"{size}-{tag}"]
            e = r["evals"][-1]
            lo, lb = _mean(e["layer_out_rms"]), _mean(base["layer_out_rms"])
            md.append(f"| {size} | {tag} (wd {r['spec']['overrides']['weight_decay']:g}, {r['max_steps']} steps) | "
                      f"{r['final_val_loss']:.4f} | "
                      f"{e['weight_rms_hidden']:.4f} | {e['weight_rms_hidden'] / base['weight_rms_hidden']:.3f} | "
                      f"{lo:.3f} | {lo / lb:.3f} | {e['layer_out_rms'][-1]:.3f} |")
    md.append("")

    # 3. update RMS per shape
    md.append("### 3. Update RMS per matrix shape (lr-free update, mean over logged steps after warm-up)\n")
    md.append("| size | shape (rows×cols) | kinds | Muon match_rms_adamw | expected | Muon original | expected "
              "| original / match | AdamW (best lr) | match / AdamW |\n|---|---|---|---|---|---|---|---|---|---|")
    for size in plans:
        m, o = results[f"{size}-muon"], results[f"{size}-muon-original"]
        a = best_adamw(results, size)[1]
        for shape in sorted(m["update_rms_by_shape"], key=lambda s: [int(x) for x in s.split("x")]):
            rows, cols = (int(x) for x in shape.split("x"))
            exp_o = math.sqrt(max(1.0, rows / cols)) / math.sqrt(max(rows, cols))
            vm, vo, va = m["update_rms_by_shape"][shape], o["update_rms_by_shape"][shape], a["update_rms_by_shape"][shape]
            md.append(f"| {size} | {shape} | {', '.join(m['kinds_of_shape'][shape])} | {vm:.3f} | 0.200 | {vo:.3f} | "
                      f"{exp_o:.3f} | {vo / vm:.3f} | {va:.3f} | {vm / va:.2f} |")
    md.append("")
    md.append("| size | Muon match_rms_adamw final val | Muon original final val | − match |\n|---|---|---|---|")
    for size in plans:
        m, o = results[f"{size}-muon"], results[f"{size}-muon-original"]
        md.append(f"| {size} | {m['final_val_loss']:.4f} | {o['final_val_loss']:.4f} | "
                  f"{o['final_val_loss'] - m['final_val_loss']:+.4f} |")
    md.append("")

    # 4. SVD entropy
    md.append("### 4. Normalised SVD entropy of the weight matrices at the end of training (mean per kind)\n")
    md.append("| size | kind | matrices | at init | AdamW (best lr) | Muon | Muon − AdamW | × AdamW |\n"
              "|---|---|---|---|---|---|---|---|")
    for size in plans:
        a, m = best_adamw(results, size)[1], results[f"{size}-muon"]
        for kind in ("attention", "dense", "expert", "shared", "router"):
            if kind not in m["svd_entropy_final"]:
                continue
            ha, hm, h0 = (_mean(r[k][kind]) for r, k in ((a, "svd_entropy_final"), (m, "svd_entropy_final"),
                                                          (m, "svd_entropy_init")))
            label = "routed expert (per expert)" if kind == "expert" else kind
            md.append(f"| {size} | {label} | {len(m['svd_entropy_final'][kind])} | {h0:.4f} | {ha:.4f} | {hm:.4f} | "
                      f"{hm - ha:+.4f} | {hm / ha:.3f} |")
    md.append("")
    return summary, "\n".join(md)


def wd_pairs(results: dict, plans: dict) -> list[tuple[str, str]]:
    """(size, tag suffix) of each Muon pair with / without weight decay."""
    return [(size, suffix) for size in plans for suffix in ("", "-long") if f"{size}-muon-nowd{suffix}" in results]


def _mean(xs) -> float:
    return sum(xs) / len(xs)


# ---------------------------------------------------------------------------------------------- main
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny budget (debug model, 40 steps, 2 lrs): smoke test")
    ap.add_argument("--sizes", nargs="+", default=None, help="model sizes to run (default: all of the budget)")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiply every run's steps (shrink the budget)")
    ap.add_argument("--short-fracs", type=float, nargs="*", default=None,
                    help="Muon runs with this fraction of the steps (default 0.5 0.6; quick: 0.5)")
    ap.add_argument("--muon-lr-mults", type=float, nargs="*", default=[2.0],
                    help="extra Muon runs at these multiples of AdamW's best lr (a sensitivity check)")
    ap.add_argument("--wd", type=float, default=0.1, help="weight decay of AdamW and Muon (the nowd run: 0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="runs in parallel")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--log-every", type=int, default=10, help="steps between update-RMS measurements")
    ap.add_argument("--out", default=None, help="run directory (default runs/bench_muon_vs_adamw[_quick])")
    ap.add_argument("--figures", default=None, help="PNG directory (default bench/figures; quick: <out>/figures)")
    ap.add_argument("--fresh", action="store_true", help="re-run even when an identical run is stored")
    args = ap.parse_args()
    plans = QUICK if args.quick else FULL
    if args.sizes:
        unknown = set(args.sizes) - set(plans)
        if unknown:
            ap.error(f"--sizes: unknown {sorted(unknown)}; choose from {sorted(plans)}")
        plans = {k: v for k, v in plans.items() if k in args.sizes}
    if args.short_fracs is None:
        args.short_fracs = [0.5] if args.quick else [0.5, 0.6]
    if args.quick:
        args.log_every = min(args.log_every, 5)
    args.out = args.out or str(ROOT / "runs" / ("bench_muon_vs_adamw_quick" if args.quick else "bench_muon_vs_adamw"))
    args.figures = args.figures or (str(Path(args.out) / "figures") if args.quick else str(ROOT / "bench" / "figures"))

    t0 = time.perf_counter()
    results = execute(args, plans)
    wall = time.perf_counter() - t0
    summary, md = analyse(results, plans)
    from muon_vs_adamw_plots import write_figures

    figures = write_figures(results, summary, plans, args.figures)
    header = (f"command: {' '.join([Path(sys.executable).name] + sys.argv)}\n"
              f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}, machine: {cpu_name()}, "
              f"{os.cpu_count()} CPUs, {args.workers} runs in parallel × {args.threads} thread(s), wall {wall:.0f} s\n")
    print("\n" + header + "\n" + md)
    print("figures: " + ", ".join(str(f) for f in figures))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "tables.md").write_text(header + "\n" + md + "\n")
    (Path(args.out) / "summary.json").write_text(json.dumps(
        {"wall_seconds": wall, "args": vars(args), "summary": summary, "figures": [str(f) for f in figures],
         "run_seconds": {t: r["total_seconds"] for t, r in results.items()}}, indent=1) + "\n")


if __name__ == "__main__":
    main()
