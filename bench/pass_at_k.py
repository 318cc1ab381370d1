"""Pass@k of a finished pipeline stage's model on the held-out problems: how far RL's sharpening can go.

    nice -n 5 .venv/bin/python bench/pass_at_k.py RUN_DIR --stage sft --k 16

Samples k responses per held-out problem at the RL temperature and prints, per difficulty, greedy accuracy,
pass@1 (the mean over the samples), pass@k (some sample is right) and the share of problems whose samples
disagree (the only ones whose k1.5 advantages are not all zero). A policy that only sharpens its own
samples cannot get a problem right greedily that none of its k samples gets right, so pass@k bounds what
RL of that kind can reach. One thread.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from muonext.rl.config import PipelineConfig
from muonext.rl.pipeline import Pipeline
from muonext.rl.stages import evaluate, sample_responses
from muonext.rl.verify import verify


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--stage", default="sft")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = PipelineConfig.preset(args.preset)
    pipe = Pipeline(cfg, args.run_dir, progress=False)
    model = pipe.load(args.stage).eval()
    greedy = evaluate(model, pipe.held_out, pipe.codec, pipe.eval_max_new)
    gen = torch.Generator().manual_seed(args.seed)
    drawn = sample_responses(model, pipe.held_out, pipe.codec, args.k, pipe.eval_max_new, cfg.rl.temperature, gen)
    rows = defaultdict(list)
    for p, rs in zip(pipe.held_out, drawn):
        oks = [verify(pipe.codec.decode(r), p.answer) for r in rs]
        rows[str(p.difficulty)].append(oks)
    out = {}
    for d, per_problem in sorted(rows.items()):
        n = len(per_problem)
        out[d] = {"greedy": greedy[d]["accuracy"], "pass@1": sum(sum(o) / len(o) for o in per_problem) / n,
                  f"pass@{args.k}": sum(any(o) for o in per_problem) / n,
                  "mixed": sum(0 < sum(o) < len(o) for o in per_problem) / n, "n": n}
    print(json.dumps({"stage": args.stage, "k": args.k, "levels": out}, indent=1))


if __name__ == "__main__":
    main()
