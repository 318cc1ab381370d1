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
