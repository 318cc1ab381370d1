"""Fixed-length rows and a shuffling loader whose position is two plain ints (part of the checkpoint).

Legend: N rows, T seq_len, B batch rows.

* `PackedRows`: documents tokenized and joined with an EOS after each one, cut into rows of T tokens
  (labels = the tokens; the model shifts them).
* `Loader`: epoch e visits the rows in the permutation `default_rng([seed, e])`; `next_batch()` returns the
  next B rows (crossing into the next epoch when needed). `state_dict()` = {"epoch", "index"} restores
  the position exactly, so a resumed run sees the same batches as one that never stopped.
* Data parallelism: every rank draws the same *global* batch and keeps its rows `rank::world`.
"""

from __future__ import annotations

import numpy as np
import torch


class PackedRows:
    """Rows of `seq_len` tokens from documents packed with EOS separators. ids/labels (N, T) int64."""

    def __init__(self, token_lists: list[list[int]], eos: int, seq_len: int, what: str = "corpus"):
        total = sum(len(t) + 1 for t in token_lists)
        stream = np.empty(total, dtype=np.int64)
        pos = 0
        for toks in token_lists:
            stream[pos:pos + len(toks)] = toks
            stream[pos + len(toks)] = eos
            pos += len(toks) + 1
        n = total // seq_len
        if n == 0:
            raise ValueError(f"the {what} has {total} tokens, fewer than one sequence of seq_len={seq_len}")
        self.ids = torch.from_numpy(stream[: n * seq_len].reshape(n, seq_len))
        self.labels = self.ids
        self.num_tokens = total

    def __len__(self) -> int:
        return self.ids.shape[0]


class Loader:
    """Shuffled batches of rows of a dataset with `.ids` and `.labels` (N, T)."""

    def __init__(self, dataset, batch_size: int, seed: int):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.epoch, self.index = 0, 0
        self._perm_epoch, self._perm = -1, None

    def _permutation(self) -> np.ndarray:
        if self._perm_epoch != self.epoch:
            self._perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.dataset))
            self._perm_epoch = self.epoch
        return self._perm

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, T), labels (B, T)) of the next global batch."""
        rows = []
        for _ in range(self.batch_size):
            if self.index >= len(self.dataset):
                self.epoch, self.index = self.epoch + 1, 0
            rows.append(int(self._permutation()[self.index]))
            self.index += 1
        idx = torch.tensor(rows)
        return self.dataset.ids[idx], self.dataset.labels[idx]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def eval_batches(dataset, batch_size: int, n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first n_batches·batch_size rows in order (the same every evaluation)."""
    n = min(len(dataset), batch_size * n_batches)
    return [(dataset.ids[i:i + batch_size], dataset.labels[i:i + batch_size]) for i in range(0, n, batch_size)]


def shard_rows(t: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's rows of a global batch (rows rank, rank + world, ...)."""
    return t[rank::world_size]


def tokenize_documents(tokenizer, docs: list[str]) -> list[list[int]]:
    return [e.ids for e in tokenizer.encode_batch(docs, add_special_tokens=False)]
