"""Supervised fine-tuning rows: loss on response tokens only (labels −100 on the prompt and padding).

Input: JSONL with {"prompt", "response"} or {"messages": [{"role", "content"}, ...]} (the last message
must be the assistant's: it is the response; all earlier ones form the prompt). Rendering:

    <|user|>\\n{prompt}\\n<|assistant|>\\n{response}<|endoftext|>

One example per row of T tokens (truncated at T, padded with <|pad|> or EOS), so examples never attend
to each other. Examples whose prompt fills the whole row are dropped (counted in `dropped`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .sources import CorpusError, read_jsonl_objects

IGNORE = -100
ROLES = ("system", "user", "assistant")


def render(example: dict, where: str = "example") -> tuple[str, str]:
    """(prompt text, response text) of one JSONL row."""
    if "messages" in example:
        msgs = example["messages"]
        if not isinstance(msgs, list) or not msgs or not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in msgs
        ):
            raise CorpusError(f"{where}: 'messages' must be a non-empty list of {{role in {ROLES}, content}}")
        if msgs[-1]["role"] != "assistant":
            raise CorpusError(f"{where}: the last message must have role 'assistant' (it is the response)")
        prompt = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in msgs[:-1])
        return prompt + "<|assistant|>\n", msgs[-1]["content"]
    if isinstance(example.get("prompt"), str) and isinstance(example.get("response"), str):
        return f"<|user|>\n{example['prompt']}\n<|assistant|>\n", example["response"]
    raise CorpusError(f"{where}: needs string fields 'prompt' and 'response', or 'messages'")


def read_sft_jsonl(path: str | Path) -> list[tuple[str, str]]:
    examples = [render(row, f"{path}:{lineno}") for lineno, row in read_jsonl_objects(path)]
    if not examples:
        raise CorpusError(f"{path}: no SFT examples found")
    return examples


def encode_example(tokenizer, prompt: str, response: str, eos: int) -> tuple[list[int], list[int]]:
    """(ids, labels) of one example, untruncated: labels are −100 on the prompt."""
    p = tokenizer.encode(prompt, add_special_tokens=False).ids
    r = tokenizer.encode(response, add_special_tokens=False).ids + [eos]
    return p + r, [IGNORE] * len(p) + r


class SFTRows:
    """ids / labels (N, T) int64 of the examples that keep at least one response token."""

    def __init__(self, tokenizer, examples: list[tuple[str, str]], eos: int, pad: int, seq_len: int):
        ids = torch.full((len(examples), seq_len), pad, dtype=torch.long)
        labels = torch.full((len(examples), seq_len), IGNORE, dtype=torch.long)
        kept = 0
        for prompt, response in examples:
            x, y = encode_example(tokenizer, prompt, response, eos)
            x, y = x[:seq_len], y[:seq_len]
            if all(v == IGNORE for v in y[1:]):
                continue
            ids[kept, : len(x)] = torch.tensor(x)
            labels[kept, : len(y)] = torch.tensor(y)
            kept += 1
        self.dropped = len(examples) - kept
        if kept == 0:
            raise CorpusError(f"no SFT example has a response token within seq_len={seq_len}")
        self.ids, self.labels = ids[:kept], labels[:kept]
        self.num_tokens = int((self.labels != IGNORE).sum())

    def __len__(self) -> int:
        return self.ids.shape[0]


def split_examples(examples: list, val_fraction: float) -> tuple[list, list]:
    """Every k-th example (k = round(1/val_fraction)) is held out; at least one each way."""
    if len(examples) < 2:
        raise CorpusError("SFT needs at least 2 examples (one is held out for validation)")
    k = max(2, round(1 / val_fraction))
    train = [e for i, e in enumerate(examples) if i % k != k - 1]
    val = [e for i, e in enumerate(examples) if i % k == k - 1] or [train.pop()]
    return train, val
