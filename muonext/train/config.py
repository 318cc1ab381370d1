"""TrainConfig: every knob of a training run in one typed, validated dataclass (DESIGN.md §6).

`TrainConfig.from_preset(name, **overrides)` starts from a preset (`debug`: seconds, `tiny`: the CPU demo
in minutes, `moonlight-16b-a3b`: the published model) and applies overrides; `__post_init__` checks every
field and names the wrong one. The CLI (`cli.py`) builds its flags from these fields.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

OPTIMIZERS = ("muon", "adamw")
SCHEDULES = ("cosine", "wsd")
PRECISIONS = ("fp32", "bf16")
NS_DTYPES = ("bf16", "fp32")
MUON_MODES = ("gather", "owner")


@dataclass
class TrainConfig:
    # run
    preset: str = "debug"  # the preset these values started from (recorded; `from_preset` applies it)
    model: str = "debug"  # MoonlightConfig preset of the model
    out: str = "runs/debug"  # output directory: metrics, plots, checkpoints, export
    device: str = "auto"  # auto | cpu | cuda | cuda:N (auto: cuda:LOCAL_RANK when available, else cpu)
    seed: int = 0
    # data
    data: str | None = None  # text file, folder of text files or .jsonl with "text"; None = Python stdlib
    sft: str | None = None  # .jsonl of {"prompt","response"} or {"messages":[...]}: train on responses only
    max_corpus_bytes: int | None = 4_000_000  # read at most this much text (None = everything)
    val_fraction: float = 0.05  # held-out documents (by file / line) for the validation loss
    # tokenizer
    tokenizer: str | None = None  # tokenizer.json to use; None = train a byte-level BPE here (cached)
    vocab_size: int = 512  # BPE vocabulary when training one; the model's vocab follows the tokenizer
    tokenizer_train_bytes: int = 2_000_000  # training-split text the BPE is trained on
    cache_dir: str | None = None  # tokenizer cache; None = <parent of out>/.cache
    # model initialisation
    init_from: str | None = None  # checkpoint dir of ours or a transformers-format directory
    # optimizer
    optimizer: str = "muon"  # muon | adamw
    lr: float = 3e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW (and the AdamW part of Muon)
    momentum: float = 0.95  # Muon
    ns_dtype: str = "bf16"  # Newton–Schulz precision: bf16 | fp32
    qk_clip: float = 0.0  # QK-clip τ: after each step, scale q/k of heads whose max logit is > τ; 0 = off
    log_max_logits: bool = False  # log each layer's max attention logit even without qk_clip
    muon_mode: str = "gather"  # DistributedMuon (replicated model, dp_shard 1): gather (the paper) | owner
    # parallelism (torchrun): processes = dp_replicate × dp_shard; ep is carved out of dp_shard
    dp_replicate: int = 1  # replicas: DDP when dp_shard is 1, else HSDP (replicas of a sharded model)
    dp_shard: int = -1  # FSDP2 shards of the model (-1: processes / dp_replicate); 1 = replicated
    ep: int = 1  # expert parallelism: ranks that split the routed experts (divides dp_shard)
    activation_checkpointing: bool = False  # recompute each decoder layer in backward (sharded runs)
    # schedule
    schedule: str = "cosine"  # cosine (warm-up + cosine) | wsd (warm-up, stable, decay)
    warmup_steps: int = 5
    decay_fraction: float = 0.2  # wsd: share of the steps in the final linear decay
    min_lr_ratio: float = 0.1  # final lr = lr · min_lr_ratio
    # batch and steps
    batch_size: int = 8  # sequences per micro-batch, global (split over ranks)
    seq_len: int = 64
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 30
    stop_at: int | None = None  # leave after this step (checkpointed); the schedule still follows max_steps
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    bias_update_rate: float = 1e-3  # aux-loss-free router bias update per step; 0 = off
    # evaluation, logging, checkpoints
    eval_every: int = 10  # steps between validation losses (and at the end); 0 = only at the end
    eval_batches: int = 2
    log_every: int = 1  # steps between metrics lines
    save_every: int = 0  # steps between checkpoints; 0 = only at the end
    keep_last: int = 2  # newest checkpoints kept
    keep_every: int = 0  # also keep checkpoints whose step is a multiple of this; 0 = none
    resume: str | None = None  # checkpoint dir, or "auto" = the latest in out (fresh start when none)
    # end of run
    sample_tokens: int = 48  # tokens of sample text generated at the end; 0 = none
    export: bool = True  # save_pretrained to out/export at the end
    plots: bool = True
    progress: bool = True  # tqdm progress bar

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(self, f.name, f.type)
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "precision": PRECISIONS,
                   "ns_dtype": NS_DTYPES, "muon_mode": MUON_MODES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                _fail(name, f"must be one of {allowed}", getattr(self, name))
        from ..models.config import MoonlightConfig

        if self.model not in MoonlightConfig.presets():
            _fail("model", f"must be a MoonlightConfig preset {MoonlightConfig.presets()}", self.model)
        for name in ("vocab_size", "tokenizer_train_bytes", "batch_size", "seq_len", "grad_accum", "max_steps",
                     "eval_batches", "log_every", "keep_last"):
            if getattr(self, name) <= 0:
                _fail(name, "must be > 0", getattr(self, name))
        for name in ("warmup_steps", "eval_every", "save_every", "keep_every", "sample_tokens", "seed"):
            if getattr(self, name) < 0:
                _fail(name, "must be >= 0", getattr(self, name))
        if self.vocab_size < 300:
            _fail("vocab_size", "must be >= 300 (256 bytes + special tokens + merges)", self.vocab_size)
        if self.max_corpus_bytes is not None and self.max_corpus_bytes <= 0:
            _fail("max_corpus_bytes", "must be > 0 or None", self.max_corpus_bytes)
        for name in ("lr", "grad_clip", "weight_decay", "bias_update_rate", "qk_clip"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0 or (name == "lr" and v == 0):
                _fail(name, "must be a finite number " + ("> 0" if name == "lr" else ">= 0"), v)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            _fail("betas", "must be two numbers in [0, 1)", self.betas)
        for name in ("momentum", "decay_fraction", "min_lr_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                _fail(name, "must be in [0, 1]", getattr(self, name))
        if not 0 < self.val_fraction < 1:
            _fail("val_fraction", "must be in (0, 1)", self.val_fraction)
        if self.stop_at is not None and not 0 < self.stop_at <= self.max_steps:
            _fail("stop_at", f"must be in [1, max_steps={self.max_steps}]", self.stop_at)
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            _fail("device", "must be auto, cpu, cuda or cuda:N", self.device)
        for name in ("data", "sft", "tokenizer", "init_from"):
            path = getattr(self, name)
            if path is not None and not os.path.exists(path):
                _fail(name, "names a path that does not exist", path)
        if self.data is not None and self.sft is not None:
            _fail("sft", "cannot be combined with data (SFT reads its own .jsonl)", self.sft)
        if self.resume not in (None, "auto") and not os.path.isdir(self.resume):
            _fail("resume", "must be 'auto' or an existing checkpoint directory", self.resume)
        if self.dp_replicate < 1 or self.ep < 1:
            _fail("dp_replicate" if self.dp_replicate < 1 else "ep", "must be >= 1",
                  self.dp_replicate if self.dp_replicate < 1 else self.ep)
        if self.dp_shard != -1 and self.dp_shard < 1:
            _fail("dp_shard", "must be >= 1 or -1 (the processes dp_replicate leaves)", self.dp_shard)
        if self.dp_shard != -1 and self.dp_shard % self.ep:
            _fail("ep", f"must divide dp_shard ({self.dp_shard}): experts are split among the sharded ranks",
                  self.ep)
        if self.resume is not None and self.init_from is not None:
            _fail("init_from", "cannot be combined with resume (the checkpoint holds the weights)", self.init_from)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """The preset's values, then `overrides` (field name -> value)."""
        if name not in PRESETS:
            raise ValueError(f"TrainConfig.preset must be one of {sorted(PRESETS)}, got {name!r}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"TrainConfig has no field(s) {sorted(unknown)}")
        return cls(**{**PRESETS[name], "preset": name, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.grad_accum


def _fail(name: str, why: str, value: Any) -> None:
    raise ValueError(f"TrainConfig.{name} {why}, got {value!r}")


def _check_type(cfg: TrainConfig, name: str, annotation: str) -> None:
    value = getattr(cfg, name)
    optional = "None" in annotation
    if value is None:
        if not optional:
            _fail(name, "must not be None", value)
        return
    base = annotation.replace(" | None", "")
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
    }.get(base, isinstance(value, (tuple, list)) and all(isinstance(v, (int, float)) for v in value))
    if not ok:
        _fail(name, f"must be of type {annotation}", value)
    if base == "float":
        setattr(cfg, name, float(value))


PRESETS: dict[str, dict[str, Any]] = {
    # seconds on a laptop CPU: the tests' model
    "debug": {"model": "debug", "out": "runs/debug", "vocab_size": 512, "batch_size": 8, "seq_len": 64,
              "max_steps": 30, "warmup_steps": 3, "eval_every": 10, "max_corpus_bytes": 1_000_000,
              "tokenizer_train_bytes": 500_000, "lr": 3e-3},
    # the CPU demo: a few minutes on 2 cores, loss falls visibly
    "tiny": {"model": "tiny", "out": "runs/tiny", "vocab_size": 2048, "batch_size": 16, "seq_len": 128,
             "max_steps": 300, "warmup_steps": 20, "eval_every": 100, "eval_batches": 4, "save_every": 100,
             "max_corpus_bytes": 4_000_000, "tokenizer_train_bytes": 2_000_000, "lr": 4e-3,
             "sample_tokens": 64},
    # the published model (needs GPUs; bring a tokenizer with --tokenizer)
    "moonlight-16b-a3b": {"model": "moonlight-16b-a3b", "out": "runs/moonlight", "vocab_size": 163840,
                          "batch_size": 64, "seq_len": 4096, "grad_accum": 1, "max_steps": 10000,
                          "warmup_steps": 500, "schedule": "wsd", "precision": "bf16", "lr": 4.2e-4,
                          "eval_every": 500, "save_every": 1000, "keep_every": 5000, "max_corpus_bytes": None,
                          "tokenizer_train_bytes": 200_000_000},
}
