"""A character-level codec for the arithmetic RL task: fast on CPU and exact (no merges to learn).

Ids: 0 PAD, 1 EOS, 2 BOS, then one id per character of `ALPHABET` (digits, operators, punctuation,
letters, space, newline). A character outside the alphabet raises ValueError naming it and its
position, so a silent `<unk>` never turns a wrong answer into a right one.

A training/rollout sequence is ``BOS prompt "\\n" response EOS``: `prompt_ids` gives the part the
policy is conditioned on, the response ends at EOS (the stop token of `generate`).
"""

from __future__ import annotations

import string
from collections.abc import Sequence

PAD, EOS, BOS = 0, 1, 2
SPECIALS = ("<pad>", "<eos>", "<bos>")
ALPHABET = string.digits + "+-*/=()?.,:;!'\" \n" + string.ascii_letters


class CharCodec:
    """`encode(text)` → ids, `decode(ids)` → text (specials dropped, stops at the first EOS)."""

    pad_id, eos_id, bos_id = PAD, EOS, BOS

    def __init__(self, alphabet: str = ALPHABET) -> None:
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("CharCodec alphabet has repeated characters")
        self.alphabet = alphabet
        self._ids = {c: i + len(SPECIALS) for i, c in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + len(self.alphabet)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError:
            bad = next(i for i, c in enumerate(text) if c not in self._ids)
            raise ValueError(f"CharCodec: character {text[bad]!r} at position {bad} is not in the alphabet") from None

    def decode(self, ids: Sequence[int]) -> str:
        out = []
        for t in ids:
            if t == EOS:
                break
            if t >= len(SPECIALS):
                out.append(self.alphabet[t - len(SPECIALS)])
        return "".join(out)

    def prompt_ids(self, prompt: str) -> list[int]:
        """What the policy sees before its response: BOS, the prompt, a newline."""
        return [BOS, *self.encode(prompt), self._ids["\n"]]

    def response_ids(self, response: str) -> list[int]:
        """A reference response as the policy should emit it (ends with EOS)."""
        return [*self.encode(response), EOS]


class TokenizerCodec:
    """The codec of a user's model: its tokenizers `tokenizer.json` (what `train_moonlight.py` writes and
    exports). Prompts are rendered as SFT renders them (muonext.data.sft), so a model fine-tuned on
    demonstrations sees RL prompts in the same form:

        <|user|>\\n{prompt}\\n<|assistant|>\\n{response}<EOS>
    """

    def __init__(self, path: str) -> None:
        from muonext.data.tokenizer import eos_id, load_tokenizer

        self.path = path
        self.tokenizer = load_tokenizer(path)
        self.eos_id = eos_id(self.tokenizer, path)
        pad = self.tokenizer.token_to_id("<|pad|>")
        self.pad_id = self.eos_id if pad is None else pad
        self.bos_id = self.eos_id

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        ids = list(ids)
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.encode(f"<|user|>\n{prompt}\n<|assistant|>\n")

    def response_ids(self, response: str) -> list[int]:
        return [*self.encode(response), self.eos_id]
