"""PNG plots of a pipeline directory's metrics.jsonl: RL curves, SFT loss, evaluation per model."""

from __future__ import annotations

import json
from pathlib import Path

RL_KEYS = ("reward", "accuracy", "mean_length", "log_ratio", "entropy", "rollout_tokens_per_s", "replay_buffer")


def write_plots(out: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    path = out / "metrics.jsonl"
    records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    written = []

    fig, axes = plt.subplots(2, 4, figsize=(14, 6))
    for ax, key in zip(axes.flat, RL_KEYS):
        for stage in ("rl", "l2s_rl"):
            pts = [(r["iteration"], r[key]) for r in records
                   if r["stage"] == stage and isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=stage)
        ax.set_title(key)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if ax.lines:  # a run stopped before RL has nothing to label
            ax.legend(fontsize=7)
    axes.flat[-1].axis("off")
    fig.tight_layout()
    written.append(plots / "rl.png")
    fig.savefig(written[-1], dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for stage in ("sft", "short_sft", "shortest_sft"):
        pts = [(r["iteration"], r["loss"]) for r in records if r["stage"] == stage and "loss" in r]
        if pts:
            ax.plot(*zip(*pts), label=stage)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("SFT loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(plots / "sft_loss.png")
    fig.savefig(written[-1], dpi=80)
    plt.close(fig)

    evals = [r for r in records if r["stage"] == "eval"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    if evals:
        levels = sorted({k.removeprefix("accuracy_d") for r in evals for k in r if k.startswith("accuracy_d")},
                        key=int)
        width = 0.8 / len(evals)
        for j, r in enumerate(evals):
            xs = [i + j * width for i in range(len(levels))]
            a1.bar(xs, [r.get(f"accuracy_d{d}", 0) for d in levels], width, label=r["model"])
            a2.bar(xs, [r.get(f"mean_length_d{d}", 0) for d in levels], width, label=r["model"])
        for a in (a1, a2):
            a.set_xticks([i + 0.4 - width / 2 for i in range(len(levels))], [f"d{d}" for d in levels])
            a.legend(fontsize=7)
    a1.set_title("held-out accuracy (greedy)")
    a2.set_title("mean response length (tokens)")
    fig.tight_layout()
    written.append(plots / "eval.png")
    fig.savefig(written[-1], dpi=80)
    plt.close(fig)
    return written
