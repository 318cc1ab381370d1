"""What a pipeline runs on: a codec, a model to start from, tasks, held-out tasks and demonstrations.

Two sources:

* `synthetic_data(cfg)` (the default): the arithmetic tasks of `tasks.py` with their long and short
  solutions, the character codec and a fresh model of `cfg.model_preset`;
* `user_data(init_from, ...)` (`train_rl.py --init-from DIR --tasks FILE ...`): the user's model (a
  muonext checkpoint or run directory, or a transformers DeepSeek-V3 directory) and its
  `tokenizer.json`, task files (`user_tasks.py`), held-out task files (else the last tenth of the
  tasks), and optionally demonstrations for the SFT warm start (`--sft`, {"prompt", "response"} or
  {"messages"} rows) and short ones for the short model that weight merging needs (`--short-sft`);
  without them those stages keep the model they start from and say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from muonext.models import MoonlightConfig, MoonlightForCausalLM

from .config import PipelineConfig
from .tasks import Problem, generate_problems
from .text_codec import CharCodec, TokenizerCodec
from .user_tasks import load_tasks

__all__ = ["PipelineData", "synthetic_data", "user_data"]


@dataclass
class PipelineData:
    codec: Any
    model_config: MoonlightConfig
    train: list  # Problems or tasks (prompt, difficulty, reward)
    held_out: list
    sft: list[tuple[str, str]] | None  # (prompt, response) demonstrations of the warm start
    short: list[tuple[str, str]] | None  # short demonstrations of the short model (weight merging)
    init_state: dict[str, torch.Tensor] | None = None  # weights to start from (None: a fresh model)
    description: dict | None = None  # what run.json records about the data

    def new_model(self, seed: int) -> MoonlightForCausalLM:
        torch.manual_seed(seed)
        model = MoonlightForCausalLM(self.model_config)
        if self.init_state is not None:
            model.load_state_dict(self.init_state)
        return model


def synthetic_data(cfg: PipelineConfig) -> PipelineData:
    """Training problems and a held-out set (no prompt in common), both fixed by `cfg.seed`."""
    train = generate_problems(cfg.n_train, cfg.difficulties, cfg.seed)
    seen = {p.prompt for p in train}
    held: list[Problem] = []
    for d in cfg.difficulties:
        cand = generate_problems(cfg.n_eval_per_difficulty * 4, d, cfg.seed + 7919 * d)
        held += [p for p in cand if p.prompt not in seen][: cfg.n_eval_per_difficulty]
    codec = CharCodec()
    config = MoonlightConfig.preset(
        cfg.model_preset, **{"vocab_size": codec.vocab_size, **cfg.model_overrides}
    )
    return PipelineData(
        codec,
        config,
        train,
        held,
        [(p.prompt, p.long_solution) for p in train],
        [(p.prompt, p.short_solution) for p in train],
    )


def _demonstrations(path: str | None) -> list[tuple[str, str]] | None:
    """(prompt, response) of an SFT file; the prompt as the user wrote it (the codec renders it)."""
    if path is None:
        return None
    from muonext.data.sources import read_jsonl_objects

    out = []
    for lineno, row in read_jsonl_objects(path):
        if not (isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str)):
            raise ValueError(f"{path}:{lineno}: a demonstration needs string fields 'prompt' and 'response'")
        out.append((row["prompt"], row["response"]))
    if not out:
        raise ValueError(f"{path}: no demonstrations")
    return out


def user_data(
    init_from: str,
    tasks: list[str],
    eval_tasks: list[str] | None = None,
    sft: str | None = None,
    short_sft: str | None = None,
    tokenizer: str | None = None,
) -> PipelineData:
    from muonext.models import from_pretrained
    from muonext.train.build import resolve_init_dir
    from muonext.train.checkpoint import load_checkpoint

    kind, path = resolve_init_dir(init_from)
    tokenizer = tokenizer or str(Path(path) / "tokenizer.json")
    if not Path(tokenizer).is_file():
        raise FileNotFoundError(f"{tokenizer}: no tokenizer.json beside the model; pass --tokenizer")
    codec = TokenizerCodec(tokenizer)
    if kind == "hf":
        model = from_pretrained(path)
        config, state = model.config, model.state_dict()
    else:
        ck = load_checkpoint(path)
        config, state = MoonlightConfig(**ck.shared["model_config"]), ck.model_state()
    if config.vocab_size < codec.vocab_size:
        raise ValueError(f"{tokenizer}: {codec.vocab_size} tokens, the model has only {config.vocab_size}")
    train = load_tasks(tasks)
    if eval_tasks:
        held = load_tasks(eval_tasks)
    else:  # hold out the last tenth
        cut = max(1, len(train) // 10)
        if len(train) < 2:
            raise ValueError("--tasks: at least two rows are needed to hold one out (or pass --eval-tasks)")
        train, held = train[:-cut], train[-cut:]
    return PipelineData(
        codec,
        config,
        train,
        held,
        _demonstrations(sft),
        _demonstrations(short_sft),
        state,
        {
            "init_from": str(init_from),
            "tokenizer": tokenizer,
            "tasks": tasks,
            "eval_tasks": eval_tasks,
            "sft": sft,
            "short_sft": short_sft,
            "n_train": len(train),
            "n_held_out": len(held),
        },
    )
