"""PNG plots of a run's metrics.jsonl: loss (+ validation), lr, update RMS per kind, expert load, and the
max attention logit per layer when it was recorded (--qk-clip / --log-max-logits), with τ.

Written at the end of training and on demand:  python -m muonext.train.plots RUN_DIR
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .metrics import read_metrics


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def write_plots(out: str | os.PathLike) -> list[Path]:
    """Write loss.png, lr.png, update_rms.png, expert_load.png (and max_logit.png) into `out`; returns the
    files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    records = read_metrics(out)
    if not records:
        raise FileNotFoundError(f"{out}/metrics.jsonl: no metrics to plot")
    prefixes = {
        "loss": ["loss", "val_loss"],
        "lr": ["lr"],
        "update_rms": sorted({k for r in records for k in r if k.startswith("update_rms/")}),
        "expert_load": ["expert_load/max_over_mean", "expert_load/maxvio"],
    }
    logit_keys = sorted({k for r in records for k in r if k.startswith("attn/max_logit/")})
    if logit_keys:
        prefixes["max_logit"] = logit_keys
    written = []
    for name, keys in prefixes.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        drawn = False
        for key in keys:
            xs, ys = _series(records, key)
            if xs:
                ax.plot(xs, ys, marker="o" if key == "val_loss" else None, markersize=3, label=key)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, f"no {name} data", ha="center", va="center", transform=ax.transAxes)
        if name == "loss" and drawn:
            ax.set_ylabel("cross-entropy (nats/token)")
        if name == "max_logit":
            ax.set_ylabel("max pre-softmax logit over heads")
            tau = _qk_clip_threshold(out)
            if tau:
                ax.axhline(tau, color="k", linestyle="--", linewidth=1, label=f"QK-clip τ = {tau:g}")
        ax.set_xlabel("step")
        ax.set_title(name.replace("_", " "))
        if drawn:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def _qk_clip_threshold(out: Path) -> float:
    try:
        return float(json.loads((out / "run.json").read_text())["config"].get("qk_clip", 0.0))
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m muonext.train.plots", description=__doc__)
    parser.add_argument("run_dir", help="a run directory holding metrics.jsonl")
    args = parser.parse_args(argv)
    for path in write_plots(args.run_dir):
        print(path)


if __name__ == "__main__":
    main()
