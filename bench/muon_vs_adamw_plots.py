"""Figures of bench/muon_vs_adamw.py: one PNG per claim, one panel (row) per model size."""

from __future__ import annotations

import math
from pathlib import Path

KIND_ORDER = ("attention", "dense", "expert", "shared", "router")


def _curve(res: dict, key: str = "val_loss"):
    return [e["tokens"] for e in res["evals"]], [e[key] for e in res["evals"]]


def write_figures(results: dict, summary: dict, plans: dict, out_dir: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes = list(plans)
    written = []

    # 1. validation loss vs tokens
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.2), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        s = summary[size]
        for lr in s["sweep"]:
            r = results[f"{size}-adamw-lr{lr}"]
            best = float(lr) == s["adamw_best_lr"]
            ax.plot(*_curve(r), color="tab:blue", lw=2 if best else 0.8, alpha=1 if best else 0.45,
                    label=f"AdamW lr {lr}" + (" (best)" if best else ""))
        ax.plot(*_curve(results[f"{size}-muon"]), color="tab:red", lw=2, label=f"Muon lr {s['adamw_best_lr']:g}")
        for tag in sorted(t for t in results if t.startswith(f"{size}-muon-lr")):
            ax.plot(*_curve(results[tag]), color="tab:purple", lw=1.2, ls="-.",
                    label=f"Muon lr {results[tag]['spec']['overrides']['lr']:g} (sensitivity)")
        for tag in sorted(s["short"]):
            ax.plot(*_curve(results[tag]), color="tab:red", lw=1, ls="--", label=tag.split("-", 1)[1])
        ax.axhline(s["adamw_final"], color="gray", lw=0.8, ls=":")
        if s["muon_tokens"] is not None:
            ax.axvline(s["muon_tokens"], color="tab:red", lw=0.8, ls=":")
            ax.annotate(f"Muon reaches AdamW's final loss\nat {s['ratio']:.2f}× its tokens",
                        (s["muon_tokens"], s["adamw_final"]), textcoords="offset points", xytext=(8, 25), fontsize=8)
        finals = [v for v in s["sweep"].values()] + [s["muon_final"]]
        lo = min(finals)
        ax.set_ylim(lo - 0.1, lo + 2.0)
        ax.set_xlabel("training tokens")
        ax.set_ylabel("validation loss")
        ax.set_title(f"{size} ({s['params'] / 1e6:.2f}M params)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    written.append(_save(fig, out / "muon_vs_adamw_val_loss.png"))

    # 2. weight decay: weight RMS, layer-output RMS, val loss
    pairs = [(size, sfx) for size in sizes for sfx in ("", "-long") if f"{size}-muon-nowd{sfx}" in results]
    fig, axes = plt.subplots(len(pairs), 3, figsize=(16, 4 * len(pairs)), squeeze=False)
    for row, (size, sfx) in zip(axes, pairs):
        runs = {"wd": results[f"{size}-muon{sfx}"], "no wd": results[f"{size}-muon-nowd{sfx}"]}
        title = f"{size}, {runs['wd']['max_steps']} steps"
        for label, r in runs.items():
            ls = "-" if label == "wd" else "--"
            t = [e["tokens"] for e in r["evals"]]
            row[0].plot(t, [e["weight_rms_hidden"] for e in r["evals"]], color="k", ls=ls, lw=1.5,
                        label=f"all hidden matrices, {label}")
            for i, kind in enumerate(k for k in KIND_ORDER if k in r["evals"][0]["weight_rms"]):
                row[0].plot(t, [e["weight_rms"][kind] for e in r["evals"]], color=f"C{i}", ls=ls, lw=0.9,
                            label=f"{kind}, {label}")
            n_layers = len(r["evals"][0]["layer_out_rms"])
            for i in range(n_layers):
                row[1].plot(t, [e["layer_out_rms"][i] for e in r["evals"]], color=f"C{i}", ls=ls,
                            label=f"layer {i}, {label}")
            row[2].plot(*_curve(r), ls=ls, color="tab:red", label=f"Muon, {label} "
                        f"({r['spec']['overrides']['weight_decay']:g})")
        row[0].set_title(f"{title}: weight RMS")
        row[1].set_title(f"{title}: layer-output RMS (held-out batches)")
        row[2].set_title(f"{title}: validation loss (Muon)")
        lo = min(r["final_val_loss"] for r in runs.values())
        row[2].set_ylim(lo - 0.1, lo + 1.5)
        for ax in row:
            ax.set_xlabel("training tokens")
            ax.legend(fontsize=6, ncol=2)
            ax.grid(alpha=0.3)
    written.append(_save(fig, out / "muon_vs_adamw_weight_decay.png"))

    # 3. update RMS per matrix shape
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.2), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        m, o = results[f"{size}-muon"], results[f"{size}-muon-original"]
        a = results[f"{size}-adamw-lr{summary[size]['adamw_best_lr']:g}"]
        shapes = sorted(m["update_rms_by_shape"], key=lambda s: [int(x) for x in s.split("x")])
        x = range(len(shapes))
        w = 0.27
        for j, (label, r, c) in enumerate((("Muon match_rms_adamw", m, "tab:red"), ("Muon original", o, "tab:orange"),
                                           ("AdamW", a, "tab:blue"))):
            ax.bar([i + (j - 1) * w for i in x], [r["update_rms_by_shape"][s] for s in shapes], w, color=c, label=label)
        ax.axhline(0.2, color="k", lw=0.8, ls=":", label="0.2 (target)")
        top = max(r["update_rms_by_shape"][s] for r in (m, o, a) for s in shapes) if shapes else 0.4
        ax.set_ylim(0, top * 1.4)
        ax.set_xticks(list(x))
        ax.set_xticklabels([f"{s}\n{','.join(k[:4] for k in m['kinds_of_shape'][s])}" for s in shapes], fontsize=7)
        ax.set_ylabel("RMS of the lr-free update")
        ax.set_title(f"{size}: update RMS per matrix shape")
        ax.legend(fontsize=7, ncol=2, loc="upper left")
        ax.grid(alpha=0.3, axis="y")
    written.append(_save(fig, out / "muon_vs_adamw_update_rms.png"))

    # 4. SVD entropy per kind
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.2), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        m = results[f"{size}-muon"]
        a = results[f"{size}-adamw-lr{summary[size]['adamw_best_lr']:g}"]
        kinds = [k for k in KIND_ORDER if k in m["svd_entropy_final"]]
        w = 0.27
        for j, (label, vals, c) in enumerate((
                ("init", m["svd_entropy_init"], "gray"), ("AdamW", a["svd_entropy_final"], "tab:blue"),
                ("Muon", m["svd_entropy_final"], "tab:red"))):
            means = [sum(vals[k]) / len(vals[k]) for k in kinds]
            errs = [_std(vals[k]) for k in kinds]
            ax.bar([i + (j - 1) * w for i in range(len(kinds))], means, w, yerr=errs, color=c, label=label, capsize=2)
        ax.set_xticks(range(len(kinds)))
        ax.set_xticklabels(["routed expert" if k == "expert" else k for k in kinds], fontsize=8)
        lo = min(min(v) for r in (m["svd_entropy_final"], a["svd_entropy_final"]) for v in r.values())
        ax.set_ylim(max(0.0, lo - 0.05), 1.0)
        ax.set_ylabel("normalised SVD entropy (mean ± sd over matrices)")
        ax.set_title(f"{size}: SVD entropy at the end of training")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    written.append(_save(fig, out / "muon_vs_adamw_svd_entropy.png"))
    return written


def _std(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
