"""The k1.5 pipeline on CPU: SFT warm start → RL → evaluation → long2short (DESIGN.md §7).

Stages, each writing DIR/<stage>/ and a `done.json` when complete (a finished stage is skipped on rerun):

* ``sft``        the model learns the long-form solutions (so RL starts from a non-zero pass rate);
* ``rl``         `RLTrainer` from the SFT model; a checkpoint per iteration (model, policy average,
                 optimizer, sampler, replay buffer, RNGs): an interrupted run resumes from the last one.
                 The stage's model is the policy average (`RLConfig.policy_ema`), or the last policy;
* ``short_sft``  the RL (long-CoT) model fine-tuned on the short solutions (the "short model");
* ``merge``      long2short by weight merging: ratio·θ_long + (1 − ratio)·θ_short;
* ``shortest_sft`` long2short by shortest rejection sampling: n samples per prompt from the long model
                 (DIR/long_samples.json), the long model fine-tuned on the shortest correct one of each;
* ``dpo``        long2short by DPO on the same samples: chosen = shortest correct, rejected = wrong or
                 ≥1.5× longer, the long model as reference;
* ``l2s_rl``     long2short RL: RL from the long model with the length reward from iteration 0, a
                 shorter max length, rollouts at `l2s_temperature` (as the long2short samples) and its
                 own policy average (`l2s_policy_ema`);
* ``eval``       held-out accuracy and response length per difficulty of every model, greedy and sampled
                 (`eval_samples` responses per problem at the RL temperature).

DIR/metrics.jsonl has one object per logged point with `stage`, `iteration`, `reward`, `accuracy`,
`mean_length` (+ stage-specific fields); DIR/plots/*.png are drawn from it; DIR/summary.json holds the
evaluation table. Threads: one by default — on a small shared CPU, one intra-op thread is several
times faster than two (the second spins while the core is busy elsewhere).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from muonext.models import MoonlightConfig, MoonlightForCausalLM
from muonext.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from muonext.train.metrics import git_revision, library_versions

from .config import PipelineConfig
from .long2short import merge_state_dicts
from .pipeline_data import PipelineData, synthetic_data
from .stages import (
    StepCheckpoints,
    dpo_train,
    evaluate,
    is_correct,
    long2short_data,
    sample_responses,
    sft_train,
)
from .task_adapter import MathTask
from .trainer import RLTrainer
from .user_tasks import measure_difficulty

STAGES = ("sft", "rl", "short_sft", "merge", "shortest_sft", "dpo", "l2s_rl", "eval")
REQUIRED = ("stage", "iteration", "reward", "accuracy", "mean_length")


# ------------------------------------------------------------------------------------------ metrics
class MetricsFile:
    """Append-only JSONL; `drop(stage, from_iteration)` removes records a resumed stage will rewrite."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]

    def drop(self, stage: str, from_iteration: int = 0) -> None:
        keep = [r for r in self.read() if not (r["stage"] == stage and r["iteration"] >= from_iteration)]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))


def _config_dict(config: MoonlightConfig) -> dict[str, Any]:
    """A model config as the JSON a checkpoint stores (tuples become lists), for comparing."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


# ------------------------------------------------------------------------------------------ pipeline
class Pipeline:
    def __init__(self, cfg: PipelineConfig, out: str | os.PathLike, progress: bool = True,
                 stop_after_rl_iteration: int | None = None, data: PipelineData | None = None) -> None:
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.out.mkdir(parents=True, exist_ok=True)
        self.data = data or synthetic_data(cfg)
        self.codec = self.data.codec
        self.metrics = MetricsFile(self.out / "metrics.jsonl")
        self.train_set, self.held_out = self.data.train, self.data.held_out
        self.stop_after = stop_after_rl_iteration  # tests: simulate an interruption of the RL stage
        self.rl_max_new = cfg.rl.max_new_tokens
        self.eval_max_new = cfg.eval_max_new_tokens or self.rl_max_new

    # ---------------------------------------------------------------- stage bookkeeping
    def _done(self, stage: str) -> dict | None:
        p = self.out / stage / "done.json"
        return json.loads(p.read_text()) if p.exists() else None

    def _finish(self, stage: str, model: torch.nn.Module, step: int, **info: Any) -> None:
        path = save_checkpoint(self.out / stage, step, model_state=model.state_dict(), rank_state={},
                               shared={"stage": stage, "model_config": _config_dict(model.config)})
        (self.out / stage / "done.json").write_text(json.dumps({"checkpoint": path.name, **info}, indent=1))
        shutil.rmtree(self.out / stage / "progress", ignore_errors=True)  # mid-stage checkpoints: done with

    def load(self, stage: str) -> MoonlightForCausalLM:
        done = self._done(stage)
        if done is None:
            raise FileNotFoundError(f"{self.out / stage}: stage {stage!r} has not finished")
        model = self.data.new_model(self.cfg.seed)
        ckpt = load_checkpoint(self.out / stage / done["checkpoint"])
        saved, built = ckpt.shared.get("model_config"), _config_dict(model.config)
        if saved is not None and saved != built:  # older checkpoints did not record it
            diff = {k: (saved.get(k), built.get(k)) for k in sorted(saved.keys() | built.keys())
                    if saved.get(k) != built.get(k)}
            raise ValueError(f"{ckpt.path}: stage {stage!r} was trained with another model than this "
                             f"config builds ((saved, built): {diff}); pass the model_overrides it was "
                             f"trained with (DIR/run.json)")
        model.load_state_dict(ckpt.model_state())
        return model

    def _log(self, stage: str) -> Callable[[dict], None]:
        def log(record: dict) -> None:
            self.metrics.log({"stage": stage, **record})

        return log

    # ---------------------------------------------------------------- stages
    def run(self, stages: tuple[str, ...] = STAGES) -> dict[str, Any]:
        self._header()
        for stage in stages:
            if self._done(stage) is not None:
                continue
            t0 = time.perf_counter()
            getattr(self, f"stage_{stage}")()
            if stage == "rl" and self._done("rl") is None:
                return {"interrupted": "rl"}
            info = self._done(stage) or {}
            info["seconds"] = time.perf_counter() - t0
            (self.out / stage / "done.json").write_text(json.dumps(info, indent=1))
        summary = self.summary()
        self.plots()
        return summary

    def _header(self) -> None:
        (self.out / "run.json").write_text(json.dumps({
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_revision": git_revision(),
            "versions": library_versions(), "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "config": dataclasses.asdict(self.cfg),
            "data": self.data.description or "synthetic arithmetic"}, indent=1, default=str))

    def _progress(self, stage: str) -> tuple[StepCheckpoints, int]:
        """The mid-stage checkpoints of a step-loop stage and the step it resumes at (0: from the start)."""
        ckpts = StepCheckpoints(self.out / stage / "progress", self.cfg.stage_checkpoint_every)
        found = list_checkpoints(ckpts.root)
        return ckpts, found[-1][0] if found else 0

    def _sft(self, stage: str, model, responses: list[tuple[list[int], list[int]]], steps: int,
             lr: float | None = None, **info: Any) -> None:
        ckpts, start = self._progress(stage)
        self.metrics.drop(stage, start)
        log = self._log(stage)
        lr = self.cfg.sft_lr if lr is None else lr
        sft_train(model, responses, steps, self.cfg.sft_batch, lr, self.cfg.seed, self.codec.pad_id,
                  log=lambda s, loss: log({"iteration": s, "loss": loss, "reward": None, "accuracy": None,
                                           "mean_length": None}),
                  progress=stage if self.progress else None, checkpoints=ckpts)
        self._finish(stage, model, steps, **info)

    def _demonstrations(self, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        return [(self.codec.prompt_ids(prompt), self.codec.response_ids(response)) for prompt, response in pairs]

    def stage_sft(self) -> None:
        model = self.data.new_model(self.cfg.seed)
        if self.data.sft is None:  # no demonstrations: RL starts from the given model as it is
            self._finish("sft", model, 0, skipped="no demonstrations (--sft)")
            return
        self._sft("sft", model, self._demonstrations(self.data.sft), self.cfg.sft_steps)

    def _tasks(self, model: torch.nn.Module) -> list:
        """The RL tasks; those without a difficulty get one measured on `model` (k1.5's model-based
        difficulty: the pass rate of `difficulty_samples` samples at temperature 1), kept in
        DIR/difficulty.json so a resumed run sees the same levels."""
        tasks = [t if hasattr(t, "reward") else MathTask(t) for t in self.train_set]
        unknown = [i for i, t in enumerate(tasks) if t.difficulty is None]
        if not unknown:
            return tasks
        path = self.out / "difficulty.json"
        if path.exists():
            rates = json.loads(path.read_text())["pass_rates"]
        else:
            gen = torch.Generator().manual_seed(self.cfg.seed + 5)
            k = self.cfg.difficulty_samples
            drawn = sample_responses(model, [tasks[i] for i in unknown], self.codec, k, self.rl_max_new, 1.0, gen)
            rates = [sum(is_correct(tasks[i], self.codec.decode(r)) for r in rs) / k
                     for i, rs in zip(unknown, drawn)]
            path.write_text(json.dumps({"pass_rates": rates, "samples": k}))
        measured = measure_difficulty([tasks[i] for i in unknown], rates)
        for i, task in zip(unknown, measured):
            tasks[i] = task
        return tasks

    def _rl(self, stage: str, start: str, rl_cfg) -> None:
        model = self.load(start)
        tasks = self._tasks(model)
        trainer = RLTrainer(model, tasks, rl_cfg, self.codec, ckpt_dir=self.out / stage, log=self._log(stage))
        resumed = trainer.resume()
        self.metrics.drop(stage, trainer.iteration if resumed else 0)
        limit = rl_cfg.iterations
        if stage == "rl" and self.stop_after is not None:
            limit = min(limit, self.stop_after)
        trainer.train(limit, progress=self.progress)
        if trainer.iteration >= rl_cfg.iterations:
            model.load_state_dict(trainer.policy_state())
            self._finish(stage, model, trainer.iteration, iterations=trainer.iteration)

    def stage_rl(self) -> None:
        self._rl("rl", "sft", self.cfg.rl)

    def stage_short_sft(self) -> None:
        model = self.load("rl")
        if self.data.short is None:
            self._finish("short_sft", model, 0, skipped="no short demonstrations (--short-sft)")
            return
        self._sft("short_sft", model, self._demonstrations(self.data.short), self.cfg.short_sft_steps)

    def stage_merge(self) -> None:
        if (self._done("short_sft") or {}).get("skipped"):
            self._finish("merge", self.load("rl"), 0, skipped="no short model to merge with")
            return
        long_m, short_m = self.load("rl"), self.load("short_sft")
        long_m.load_state_dict(merge_state_dicts(long_m.state_dict(), short_m.state_dict(), self.cfg.merge_ratio))
        self._finish("merge", long_m, 0, ratio=self.cfg.merge_ratio)

    def _long_samples(self) -> tuple[list, list[list[list[int]]]]:
        """The long (RL) model's `l2s_samples` responses at `l2s_temperature` to the first `l2s_prompts`
        training problems: drawn once, kept in DIR/long_samples.json (token ids), shared by shortest rejection
        sampling and DPO."""
        cfg, path = self.cfg, self.out / "long_samples.json"
        problems = self.train_set[: cfg.l2s_prompts]
        if path.exists():
            stored = json.loads(path.read_text())
            samples = stored["samples"]
            temperature = stored.get("temperature", 1.0)  # files written before the knob were drawn at 1.0
            if (len(samples) != len(problems) or any(len(s) != cfg.l2s_samples for s in samples)
                    or temperature != cfg.l2s_temperature):
                raise ValueError(
                    f"{path} holds samples for another configuration (expected {len(problems)} prompts × "
                    f"{cfg.l2s_samples} at T = {cfg.l2s_temperature}, found T = {temperature}); delete it to "
                    f"draw them again"
                )
            return problems, samples
        gen = torch.Generator().manual_seed(cfg.seed + 3)
        samples = sample_responses(self.load("rl"), problems, self.codec, cfg.l2s_samples, self.rl_max_new,
                                   cfg.l2s_temperature, gen)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"samples": samples, "temperature": cfg.l2s_temperature}))
        tmp.replace(path)  # atomic: a killed run never leaves half a file
        return problems, samples

    def stage_shortest_sft(self) -> None:
        """Shortest rejection sampling: the long model fine-tuned on its own shortest correct responses."""
        problems, samples = self._long_samples()
        _, shortest = long2short_data(problems, samples, self.codec)
        if not shortest:  # no correct sample: nothing to learn from, the long model stays as it is (as in DPO)
            self._finish("shortest_sft", self.load("rl"), 0, kept=0)
            return
        data = [(self.codec.prompt_ids(p.prompt), r) for p, r in shortest]
        self._sft("shortest_sft", self.load("rl"), data, self.cfg.shortest_sft_steps, self.cfg.shortest_sft_lr,
                  kept=len(shortest), kept_mean_length=sum(len(r) for _, r in shortest) / len(shortest))

    def stage_dpo(self) -> None:
        cfg = self.cfg
        ckpts, start = self._progress("dpo")
        self.metrics.drop("dpo", start + 1 if start else 0)
        model, ref = self.load("rl"), self.load("rl")
        ref.eval()
        problems, samples = self._long_samples()
        pairs, shortest = long2short_data(problems, samples, self.codec)
        log = self._log("dpo")
        if not start:
            log({"iteration": 0, "pairs": len(pairs), "shortest_rejection_kept": len(shortest),
                 "reward": None, "accuracy": None,
                 "mean_length": sum(len(r) for s in samples for r in s) / max(1, sum(len(s) for s in samples))})
        dpo_train(model, ref, pairs, cfg.dpo_steps, 16, cfg.dpo_lr, cfg.dpo_beta, cfg.seed, self.codec.pad_id,
                  log=lambda s, st: log({"iteration": s + 1, "reward": None, "accuracy": None,
                                         "mean_length": None, **st}), checkpoints=ckpts)
        self._finish("dpo", model, cfg.dpo_steps, pairs=len(pairs), shortest_rejection_kept=len(shortest))

    def stage_l2s_rl(self) -> None:
        c = self.cfg
        max_new = c.l2s_max_new_tokens or max(8, 3 * c.rl.max_new_tokens // 4)
        rl_cfg = c.rl.replace(iterations=c.l2s_iterations, length_weight=c.l2s_length_weight, length_warmup=0,
                              max_new_tokens=max_new, segment_tokens=min(c.rl.segment_tokens, max_new),
                              temperature=c.l2s_temperature, seed=c.rl.seed + 1, policy_ema=c.l2s_policy_ema,
                              lr=c.l2s_lr or c.rl.lr)
        if c.l2s_iterations == 0:
            self._finish("l2s_rl", self.load("rl"), 0)
            return
        self._rl("l2s_rl", "rl", rl_cfg)

    def stage_eval(self) -> None:
        self.metrics.drop("eval")
        results = {}
        for name in ("sft", "rl", "merge", "shortest_sft", "dpo", "l2s_rl", "short_sft"):
            if self._done(name) is None or self._done(name).get("skipped"):
                continue
            res = evaluate(self.load(name), self.held_out, self.codec, self.eval_max_new,
                           samples=self.cfg.eval_samples, temperature=self.cfg.rl.temperature,
                           seed=self.cfg.seed + 11)
            results[name] = res
            flat = {f"accuracy_d{k}": v["accuracy"] for k, v in res.items() if k != "all"}
            flat.update({f"mean_length_d{k}": v["mean_length"] for k, v in res.items() if k != "all"})
            for metric in ("sampled_accuracy", "sampled_mean_length"):
                flat.update({f"{metric}_d{k}": v[metric] for k, v in res.items() if k != "all" and metric in v})
            self.metrics.log({"stage": "eval", "model": name, "iteration": 0, "reward": res["all"]["accuracy"],
                              "accuracy": res["all"]["accuracy"], "mean_length": res["all"]["mean_length"], **flat})
        (self.out / "eval").mkdir(exist_ok=True)
        (self.out / "eval" / "results.json").write_text(json.dumps(results, indent=1))
        (self.out / "eval" / "done.json").write_text(json.dumps({"models": list(results)}))

    # ---------------------------------------------------------------- outputs
    def summary(self) -> dict[str, Any]:
        res_path = self.out / "eval" / "results.json"
        results = json.loads(res_path.read_text()) if res_path.exists() else {}
        rl = [r for r in self.metrics.read() if r["stage"] == "rl"]
        summary = {"eval": results, "rl_last": rl[-1] if rl else None,
                   "stage_seconds": {s: (self._done(s) or {}).get("seconds") for s in STAGES}}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    def plots(self) -> list[Path]:
        from .plots import write_plots

        return write_plots(self.out)


def run_pipeline(cfg: PipelineConfig, out: str | os.PathLike, progress: bool = True, threads: int | None = 1,
                 **kwargs: Any) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    return Pipeline(cfg, out, progress, **kwargs).run()
