"""Byte-level BPE trained locally with `tokenizers` (cached by a hash of its training text), or a given one.

Our tokenizers carry the special tokens `<|endoftext|>` (the EOS / document separator, id 0), `<|pad|>`
and the chat roles `<|system|>`, `<|user|>`, `<|assistant|>` used by SFT. A given tokenizer.json must have
an EOS token (one of EOS_CANDIDATES).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"
SPECIAL_TOKENS = [EOS, "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"]
EOS_CANDIDATES = (EOS, "</s>", "<eos>", "<|end_of_text|>", "[EOS]", "[SEP]")
TOKENIZER_FORMAT = 1  # bump when the trained tokenizer changes for the same text


def training_slice(docs: list[str], max_bytes: int) -> list[str]:
    """The first documents of the training split, about `max_bytes` of text (cut inside the last one)."""
    out, total = [], 0
    for d in docs:
        if total >= max_bytes:
            break
        out.append(d[: max_bytes - total])
        total += len(out[-1])
    return out


def train_bpe(texts: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer, length=len(texts))
    return tok


def cache_key(texts: list[str], vocab_size: int) -> str:
    h = hashlib.sha256(f"bpe-v{TOKENIZER_FORMAT}-{vocab_size}\0".encode())
    for t in texts:
        h.update(t.encode("utf-8", errors="replace"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def get_tokenizer(train_docs: list[str], vocab_size: int, max_bytes: int, cache_dir: str | os.PathLike,
                  path: str | None = None) -> tuple[Tokenizer, Path]:
    """The tokenizer at `path`, or a BPE trained on a slice of `train_docs` (cached in `cache_dir`)."""
    if path is not None:
        return load_tokenizer(path), Path(path)
    texts = training_slice(train_docs, max_bytes)
    cached = Path(cache_dir) / f"tokenizer-{cache_key(texts, vocab_size)}.json"
    if cached.is_file():
        return Tokenizer.from_file(str(cached)), cached
    tok = train_bpe(texts, vocab_size)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    tok.save(str(tmp))
    os.replace(tmp, cached)  # atomic: concurrent ranks or runs never read half a file
    return tok, cached


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a plain Exception for malformed files
        raise ValueError(f"{path}: not a tokenizers tokenizer.json ({e})") from e
    eos_id(tok, path)
    return tok


def eos_id(tok: Tokenizer, where: object = "tokenizer") -> int:
    for name in EOS_CANDIDATES:
        i = tok.token_to_id(name)
        if i is not None:
            return i
    raise ValueError(f"{where}: the tokenizer has no EOS token (one of {EOS_CANDIDATES})")


def copy_tokenizer(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    if os.path.abspath(src) != os.path.abspath(dst):
        shutil.copyfile(src, dst)
