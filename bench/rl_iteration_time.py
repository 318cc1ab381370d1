"""CPU time of RL iterations with log π_i from the rollout's log-probs vs from a forward pass (a script).

    nice -n 5 .venv/bin/python bench/rl_iteration_time.py RUN_DIR --iterations 3 --repeats 3

RUN_DIR is a pipeline directory whose `sft` stage has finished (only read). Each repeat runs the same
`--iterations` RL iterations from the SFT model once per `RLConfig.reference_logprobs` setting, in
alternating order, with every level open from the first iteration (the tiny preset, `curriculum_ramp`
0), so the responses are as long as late in a run. Same seed, so both settings draw the same problems
and, up to the last bits of the reference, the same responses. Prints the process CPU seconds of the
iterations (median over repeats), split into rollout, reference and gradient passes, and the ratio;
one thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from muonext.rl import trainer as trainer_module
from muonext.rl.config import PipelineConfig
from muonext.rl.pipeline import Pipeline
from muonext.rl.task_adapter import MathTask
from muonext.rl.trainer import RLTrainer

MODES = ("forward", "rollout")


def timed_run(pipe: Pipeline, cfg, iterations: int) -> dict[str, float]:
    trainer = RLTrainer(pipe.load("sft"), [MathTask(q) for q in pipe.train_set], cfg, pipe.codec)
    parts = {"rollout": 0.0, "reference": 0.0}

    def timing(name, fn):
        def wrapped(*args, **kwargs):
            t0 = time.process_time()
            out = fn(*args, **kwargs)
            parts[name] += time.process_time() - t0
            return out
        return wrapped

    original_rollout = trainer_module.rollout
    trainer_module.rollout = timing("rollout", original_rollout)
    trainer._reference_logp = timing("reference", trainer._reference_logp)
    try:
        t0 = time.process_time()
        tokens = sum(trainer.step()["rollout_tokens"] for _ in range(iterations))
        total = time.process_time() - t0
    finally:
        trainer_module.rollout = original_rollout
    return {"total": total, **parts, "gradient": total - sum(parts.values()), "tokens": tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    pcfg = PipelineConfig.preset(args.preset)
    pipe = Pipeline(pcfg, args.run_dir, progress=False)
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for r in range(args.repeats):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            cfg = pcfg.rl.replace(reference_logprobs=mode, curriculum_ramp=0, policy_ema=0.0)
            runs[mode].append(timed_run(pipe, cfg, args.iterations))
            print(json.dumps({"repeat": r, "mode": mode, **{k: round(v, 2) for k, v in runs[mode][-1].items()}}),
                  flush=True)
    med = {m: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for m, rs in runs.items()}
    print(f"\nCPU seconds for {args.iterations} iterations, median of {args.repeats}")
    print("| log π_i from | total | rollout | reference | gradient | rollout tokens |")
    print("|---|---|---|---|---|---|")
    for m in MODES:
        v = med[m]
        print(f"| {m} | {v['total']:.2f} | {v['rollout']:.2f} | {v['reference']:.2f} | {v['gradient']:.2f} "
              f"| {v['tokens']:.0f} |")
    print(f"\nforward / rollout total: {med['forward']['total'] / med['rollout']['total']:.2f}x")


if __name__ == "__main__":
    main()
