"""Everything a run needs before its first step: tokenizer + datasets, model, optimizer.

Tokenizer precedence: `--tokenizer`, then the tokenizer.json of the checkpoint being resumed or of the
`--init-from` directory, then a byte-level BPE trained here on the training split (cached; under torchrun
rank 0 trains it and the others read the cache).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.loader import PackedRows, tokenize_documents
from ..data.sft import SFTRows, read_sft_jsonl, split_examples
from ..data.sources import load_split
from ..data.tokenizer import eos_id, get_tokenizer
from ..models import MoonlightConfig, MoonlightForCausalLM, from_pretrained
from ..optim import DistributedMuon, Muon, muon_param_groups
from .checkpoint import MANIFEST, latest_checkpoint, load_checkpoint
from .config import TrainConfig
from .runtime import Runtime


@dataclass
class Data:
    tokenizer: object
    tokenizer_path: Path
    train: PackedRows | SFTRows
    val: PackedRows | SFTRows
    eos: int
    prompt_text: str  # start of the sample generated at the end


def resolve_init_dir(path: str) -> tuple[str, Path]:
    """("ours", checkpoint dir) or ("hf", transformers dir) for an --init-from path."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        return "ours", p
    latest = latest_checkpoint(p / "checkpoints")
    if latest is not None:
        return "ours", latest
    if (p / "config.json").is_file():
        return "hf", p
    raise FileNotFoundError(f"TrainConfig.init_from={path!r}: neither a checkpoint (manifest.json), a run "
                            "directory with checkpoints/, nor a transformers directory (config.json)")


def _given_tokenizer(cfg: TrainConfig, resume_dir: Path | None) -> str | None:
    if cfg.tokenizer is not None:
        return cfg.tokenizer
    for d in (resume_dir, Path(cfg.init_from) if cfg.init_from else None):
        if d is None:
            continue
        if cfg.init_from and d == Path(cfg.init_from):
            d = resolve_init_dir(cfg.init_from)[1]
        if (d / "tokenizer.json").is_file():
            return str(d / "tokenizer.json")
    return None


def build_data(cfg: TrainConfig, rt: Runtime, resume_dir: Path | None = None) -> Data:
    if cfg.sft is not None:
        train_ex, val_ex = split_examples(read_sft_jsonl(cfg.sft), cfg.val_fraction)
        train_docs = [p + r for p, r in train_ex]
    else:
        train_docs, val_docs = load_split(cfg.data, cfg.max_corpus_bytes, cfg.val_fraction)
    cache = cfg.cache_dir or os.path.join(os.path.dirname(os.path.abspath(cfg.out)), ".cache")
    given = _given_tokenizer(cfg, resume_dir)
    if rt.is_main:
        tok, tok_path = get_tokenizer(train_docs, cfg.vocab_size, cfg.tokenizer_train_bytes, cache, given)
    rt.barrier()
    if not rt.is_main:
        tok, tok_path = get_tokenizer(train_docs, cfg.vocab_size, cfg.tokenizer_train_bytes, cache, given)
    eos = eos_id(tok, tok_path)
    if cfg.sft is not None:
        pad = tok.token_to_id("<|pad|>")
        pad = eos if pad is None else pad
        train = SFTRows(tok, train_ex, eos, pad, cfg.seq_len)
        val = SFTRows(tok, val_ex, eos, pad, cfg.seq_len)
        prompt = val_ex[0][0]
    else:
        train = PackedRows(tokenize_documents(tok, train_docs), eos, cfg.seq_len, "training split")
        val = PackedRows(tokenize_documents(tok, val_docs), eos, cfg.seq_len, "validation split")
        prompt = tok.decode(val.ids[0, :16].tolist())
    return Data(tok, Path(tok_path), train, val, eos, prompt)


def build_model(cfg: TrainConfig, data: Data, model_config: dict | None = None) -> MoonlightForCausalLM:
    """A fresh model (seeded), the model of a resumed checkpoint (`model_config`), or --init-from."""
    vocab = data.tokenizer.get_vocab_size()
    torch.manual_seed(cfg.seed)
    if model_config is not None:
        model = MoonlightForCausalLM(MoonlightConfig(**model_config))
    elif cfg.init_from is not None:
        kind, path = resolve_init_dir(cfg.init_from)
        if kind == "hf":
            model = from_pretrained(path)
        else:
            ck = load_checkpoint(path)
            model = MoonlightForCausalLM(MoonlightConfig(**ck.shared["model_config"]))
            model.load_state_dict(ck.model_state())
    else:
        model = MoonlightForCausalLM(MoonlightConfig.preset(
            cfg.model, vocab_size=vocab, eos_token_id=data.eos, bos_token_id=None, pad_token_id=None))
    if model.config.vocab_size < vocab:
        raise ValueError(f"the model's vocab_size ({model.config.vocab_size}) is smaller than the tokenizer's "
                         f"({vocab}); use the tokenizer the model was trained with (--tokenizer)")
    return model


def model_config_dict(model: MoonlightForCausalLM) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(model.config)))


def build_optimizer(cfg: TrainConfig, model: MoonlightForCausalLM, rt: Runtime) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    kwargs = {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "momentum": cfg.momentum, "adamw_betas": cfg.betas,
              "ns_dtype": torch.float32 if cfg.ns_dtype == "fp32" else torch.bfloat16}
    groups = muon_param_groups(model)
    if rt.distributed and not rt.sharded:  # a replicated model: ZeRO-1 keeps 1/N of the state per rank
        return DistributedMuon(groups, **kwargs, mode=cfg.muon_mode, grads="reduced")
    return Muon(groups, **kwargs)  # one process, or DTensor parameters (sharded where they lie)

