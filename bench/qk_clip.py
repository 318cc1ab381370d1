"""QK-clip reproduced at small scale (issue 20, Kimi K2's MuonClip).

Muon without weight decay at a high learning rate lets the max pre-softmax attention logit of the tiny
Moonlight grow far past τ within a few hundred steps, as K2 describes at 9B+ scale. The same runs with
QK-clip at τ keep it there. Each arm runs on several seeds (the same data and model per seed in both
arms); reported per arm: the largest max logit seen in any training forward (before that step's clip),
the last step's, loss spikes, heads clipped, and the final validation loss (mean and spread over seeds).

    .venv/bin/python bench/qk_clip.py --steps 300 --lr 0.02 --tau 100 --seeds 0 1 2

Writes the runs under --out, a markdown table on stdout (and <out>/table.md), and the figure
bench/figures/qk_clip.png (max logit per step, training loss, both arms).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from muonext.train import TrainConfig, train  # noqa: E402
from muonext.train.metrics import read_metrics  # noqa: E402


def run_arm(out: Path, seed: int, tau: float, args) -> list[dict]:
    cfg = TrainConfig.from_preset(
        "tiny", out=str(out), seed=seed, lr=args.lr, weight_decay=0.0, max_steps=args.steps,
        warmup_steps=10, schedule="wsd", eval_every=args.steps, eval_batches=16, save_every=0,
        sample_tokens=0, export=False, progress=False, cache_dir=str(args.out / ".cache"),
        qk_clip=tau, log_max_logits=True, device="cpu")
    if not (out / "metrics.jsonl").exists() or len(read_metrics(out)) < args.steps:
        train(cfg)
    return read_metrics(out)


def spikes(losses: list[float], window: int = 20, factor: float = 1.25) -> int:
    """Steps whose loss exceeds `factor` times the median of the `window` steps before."""
    return sum(losses[i] > factor * statistics.median(losses[i - window:i]) for i in range(window, len(losses)))


def summarise(recs: list[dict]) -> dict:
    return {"peak": max(r["attn/max_logit"] for r in recs), "last": recs[-1]["attn/max_logit"],
            "spikes": spikes([r["loss"] for r in recs]), "clipped": sum(r["attn/clipped_heads"] for r in recs),
            "val": recs[-1]["val_loss"]}


def figure(runs: dict, tau: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_l, ax_r) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"muon": "tab:red", "muon + qk-clip": "tab:blue"}
    for (arm, seed), recs in runs.items():
        steps = [r["step"] for r in recs]
        kw = {"color": colors[arm], "alpha": 0.8, "linewidth": 1, "label": arm if seed == min(
            s for a, s in runs if a == arm) else None}
        ax_l.plot(steps, [r["attn/max_logit"] for r in recs], **kw)
        losses, ema = [], None
        for r in recs:
            ema = r["loss"] if ema is None else 0.9 * ema + 0.1 * r["loss"]
            losses.append(ema)
        ax_r.plot(steps, losses, **kw)
    ax_l.axhline(tau, color="k", linestyle="--", linewidth=1, label=f"τ = {tau:g}")
    ax_l.set_yscale("log")
    ax_l.set(xlabel="step", ylabel="max attention logit (all layers, heads)", title="max logit")
    ax_r.set(xlabel="step", ylabel="training loss (EMA 0.9)", title="loss")
    for ax in (ax_l, ax_r):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("tiny Moonlight, Muon, weight decay 0: without and with QK-clip (one line per seed)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--tau", type=float, default=100.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_qk_clip")
    p.add_argument("--figure", type=Path, default=ROOT / "bench" / "figures" / "qk_clip.png")
    args = p.parse_args()

    runs = {}
    for seed in args.seeds:
        runs["muon", seed] = run_arm(args.out / f"muon_seed{seed}", seed, 0.0, args)
        runs["muon + qk-clip", seed] = run_arm(args.out / f"qkclip_seed{seed}", seed, args.tau, args)
    stats = {key: summarise(recs) for key, recs in runs.items()}
    lines = [f"tiny preset, lr {args.lr}, weight decay 0, {args.steps} steps, τ = {args.tau:g}, "
             f"seeds {args.seeds}", "",
             "| arm | peak max logit | last max logit | loss spikes | heads clipped | final val loss |",
             "|---|---|---|---|---|---|"]
    for arm in ("muon", "muon + qk-clip"):
        rows = [stats[arm, s] for s in args.seeds]
        vals = [r["val"] for r in rows]
        spread = f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else ""
        def col(key, fmt):
            return " / ".join(format(r[key], fmt) for r in rows)

        lines.append(f"| {arm} | {col('peak', '.0f')} | {col('last', '.0f')} | {col('spikes', 'd')} | "
                     f"{col('clipped', 'd')} | {statistics.mean(vals):.3f}{spread} ({col('val', '.3f')}) |")
    table = "\n".join(lines)
    print(table)
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "summary.json").write_text(json.dumps({f"{a}/seed{s}": v for (a, s), v in stats.items()}, indent=1))
    figure(runs, args.tau, args.figure)
    print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
