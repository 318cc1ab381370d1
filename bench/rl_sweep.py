"""RL from a finished SFT stage under a CPU-time budget, with held-out accuracy along the way (a script).

    nice -n 5 .venv/bin/python bench/rl_sweep.py RUN_DIR --difficulties 2 --budget-s 900 --every 20 \
        --rl '{"optimizer": "adamw", "lr": 1e-5, "samples_per_prompt": 8, "segment_tokens": 0}'

RUN_DIR is a pipeline directory whose `sft` stage has finished (e.g. from bench/rl_arith.py); it is only
read. `--start CKPT` starts from another checkpoint of the same model instead (a mid-SFT one); `--config`
overrides the preset's pipeline settings (another model size). The RL trainer starts from that checkpoint
with the preset's RL config plus `--rl` overrides, on the training problems of `--difficulties`, and stops
when its process CPU time reaches `--budget-s` (the evaluations are not counted). Every `--every`
iterations it prints the greedy held-out accuracy per difficulty (and with `--samples N` the sampled
accuracy, N responses per problem at the RL temperature), so one run shows whether and when RL moves it;
one thread. With `policy_ema` in `--rl`, "held_out" is the policy average the run hands on and
"held_out_live" the live policy.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from muonext.rl.config import PipelineConfig
from muonext.rl.pipeline import Pipeline
from muonext.rl.stages import evaluate
from muonext.rl.task_adapter import MathTask
from muonext.rl.trainer import RLTrainer
from muonext.train.checkpoint import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--difficulties", default="2", help="comma-separated training difficulties")
    ap.add_argument("--budget-s", type=float, default=900.0, help="CPU seconds of RL (evaluations excluded)")
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--n-eval", type=int, default=64)
    ap.add_argument("--samples", type=int, default=0, help="also sampled accuracy, this many per problem")
    ap.add_argument("--rl", default="{}", help="JSON overrides of the preset's RLConfig")
    ap.add_argument("--config", default="{}", help="JSON overrides of the preset's PipelineConfig (e.g. "
                                                   "model_overrides, which must match RUN_DIR's SFT model)")
    ap.add_argument("--start", help="a checkpoint directory to start from instead of the finished SFT stage "
                                    "(e.g. RUN_DIR/sft/progress/step_00000800, a mid-SFT model)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    levels = {int(x) for x in args.difficulties.split(",")}
    cfg = PipelineConfig.preset(args.preset, **{**json.loads(args.config), "n_eval_per_difficulty": args.n_eval})
    pipe = Pipeline(cfg, args.run_dir, progress=False)
    if args.start is None:
        model = pipe.load("sft")
    else:
        model = pipe.data.new_model(cfg.seed)
        model.load_state_dict(load_checkpoint(args.start).model_state())
    tasks = [MathTask(q) for q in pipe.train_set if q.difficulty in levels]
    trainer = RLTrainer(model, tasks, cfg.rl.replace(**{"iterations": 10**9, **json.loads(args.rl)}), pipe.codec)

    handed_on = copy.deepcopy(model)

    def scores(m: torch.nn.Module) -> dict[str, float]:
        m.eval()
        res = evaluate(m, pipe.held_out, pipe.codec, pipe.eval_max_new, samples=args.samples,
                       temperature=trainer.cfg.temperature, seed=cfg.seed + 11)
        out = {k: round(v["accuracy"], 3) for k, v in res.items()}
        out.update({f"{k}_sampled": round(v["sampled_accuracy"], 3) for k, v in res.items() if args.samples})
        return out

    def held_out() -> dict[str, Any]:
        if trainer.policy_average is None:
            return {"held_out": scores(model)}
        handed_on.load_state_dict(trainer.policy_state())
        return {"held_out": scores(handed_on), "held_out_live": scores(model)}

    print(json.dumps({"iteration": 0, "cpu_s": 0.0, **held_out()}), flush=True)
    cpu = 0.0
    while cpu < args.budget_s:
        t0 = time.process_time()
        record = trainer.step()
        cpu += time.process_time() - t0
        if trainer.iteration % args.every == 0:
            print(json.dumps({"iteration": trainer.iteration, "cpu_s": round(cpu, 1),
                              "reward": round(record["reward"], 3), "entropy": round(record["entropy"], 4),
                              **held_out()}), flush=True)
    print(json.dumps({"iteration": trainer.iteration, "cpu_s": round(cpu, 1), **held_out()}), flush=True)


if __name__ == "__main__":
    main()
