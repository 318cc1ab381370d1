"""k1.5 RL pipeline on CPU: SFT warm start → RL → evaluation → long2short (muonext.rl.pipeline).

    python examples/train_rl.py --preset debug --out runs/rl-debug      # about two minutes on 2 cores
    python examples/train_rl.py --preset tiny --out runs/rl-tiny --rl-iterations 60

Rerunning with the same --out skips finished stages and resumes RL from its last iteration.
"""

from __future__ import annotations

import argparse
import json

from muonext.rl.config import PipelineConfig
from muonext.rl.pipeline import run_pipeline


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=("debug", "tiny"), default="debug")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: leave torch's default)")
    ap.add_argument("--sft-steps", type=int)
    ap.add_argument("--rl-iterations", type=int)
    ap.add_argument("--segment-tokens", type=int, help="partial-rollout budget per trajectory and iteration")
    ap.add_argument("--optimizer", choices=("muon", "adamw"))
    ap.add_argument("--no-reset-optimizer", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    rl = {k: v for k, v in {"iterations": args.rl_iterations, "segment_tokens": args.segment_tokens,
                            "optimizer": args.optimizer, "seed": args.seed}.items() if v is not None}
    if args.no_reset_optimizer:
        rl["reset_optimizer"] = False
    over = {"seed": args.seed, "rl": rl}
    if args.sft_steps is not None:
        over["sft_steps"] = args.sft_steps
    cfg = PipelineConfig.preset(args.preset, **over)
    summary = run_pipeline(cfg, args.out, progress=not args.no_progress, threads=args.threads)
    print(json.dumps({m: r["all"] for m, r in summary.get("eval", {}).items()}, indent=1))
    return summary


if __name__ == "__main__":
    main()
