"""k1.5 RL pipeline: SFT warm start → RL → evaluation → long2short (muonext.rl.pipeline).

Your model and your tasks (a train_moonlight.py run, its export, or any transformers DeepSeek-V3
directory with its tokenizer.json; JSONL task files of math and code rows, see muonext/rl/user_tasks.py):

    python examples/train_rl.py --init-from runs/demo/export --sft demos.jsonl \
        --tasks math.jsonl --tasks code.jsonl:0.5 --eval-tasks held_out.jsonl --out runs/rl-mine

The built-in arithmetic tasks and model:

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
    ap.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (0: leave torch's default)"
    )
    ap.add_argument("--sft-steps", type=int)
    ap.add_argument("--rl-iterations", type=int)
    ap.add_argument("--segment-tokens", type=int, help="partial-rollout budget per trajectory and iteration")
    ap.add_argument("--optimizer", choices=("muon", "adamw"))
    ap.add_argument("--no-reset-optimizer", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    mine = ap.add_argument_group("your model and tasks (--preset then sets the RL hyper-parameters only)")
    mine.add_argument("--init-from", help="a muonext checkpoint / run directory or a transformers directory")
    mine.add_argument("--tokenizer", help="tokenizer.json (default: the one in the --init-from directory)")
    mine.add_argument(
        "--tasks",
        action="append",
        metavar="FILE[:WEIGHT]",
        help="JSONL task file, repeatable; the weight is its share of the prompts",
    )
    mine.add_argument(
        "--eval-tasks", action="append", metavar="FILE", help="held-out tasks (default: the last tenth)"
    )
    mine.add_argument(
        "--sft", metavar="FILE", help="demonstrations {prompt, response} for the SFT warm start"
    )
    mine.add_argument(
        "--short-sft", metavar="FILE", help="short demonstrations for the short model (merging)"
    )
    args = ap.parse_args(argv)
    data = None
    if args.tasks or args.init_from:
        if not (args.tasks and args.init_from):
            ap.error("--init-from and --tasks go together (your model and your tasks)")
        from muonext.rl.pipeline_data import user_data

        try:
            data = user_data(
                args.init_from, args.tasks, args.eval_tasks, args.sft, args.short_sft, args.tokenizer
            )
        except (ValueError, OSError) as e:
            ap.error(str(e))
    rl = {
        k: v
        for k, v in {
            "iterations": args.rl_iterations,
            "segment_tokens": args.segment_tokens,
            "optimizer": args.optimizer,
            "seed": args.seed,
        }.items()
        if v is not None
    }
    if args.no_reset_optimizer:
        rl["reset_optimizer"] = False
    over = {"seed": args.seed, "rl": rl}
    if args.sft_steps is not None:
        over["sft_steps"] = args.sft_steps
    cfg = PipelineConfig.preset(args.preset, **over)
    summary = run_pipeline(cfg, args.out, progress=not args.no_progress, threads=args.threads, data=data)
    print(json.dumps({m: r["all"] for m, r in summary.get("eval", {}).items()}, indent=1))
    return summary


if __name__ == "__main__":
    main()
