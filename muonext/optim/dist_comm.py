"""The optimizers' collectives (DistributedMuon, and Muon on DTensors): torch.distributed calls with byte
counters and failures that name a rank.

Bytes are counted per rank and per collective kind with the ring-algorithm volumes (the convention of
nccl-tests), for a full buffer of M bytes over N ranks:
  reduce_scatter, all_gather   sent = received = (N − 1)/N · M
  all_reduce                   sent = received = 2 · (N − 1)/N · M
  all_to_all                   the exact bytes to / from other ranks (self-sends are free)
These are what the algorithm must move, whatever a backend does internally (gloo's all_gather, for one,
is not a ring). A rank that raises inside the optimizer's `step` records "rank r failed: …" in the
process group's store; a rank whose collective then fails (peer gone, or the process-group timeout)
raises `DistributedMuonError` quoting that record, instead of hanging or blaming the transport.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
from collections import defaultdict

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Collectives", "DistributedMuonError", "check_same_everywhere"]

_FAILURE_KEY = "muonext/distributed_muon/failed/{rank}"


class DistributedMuonError(RuntimeError):
    """A collective of DistributedMuon (or of Muon on DTensors) failed because another rank raised, died
    or timed out."""


def _store():
    try:  # the default group's store: torch keeps no public accessor for it
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no store, no failure records; the error still says what happened
        return None


def _element_bytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


class _Handle:
    """An async collective; wait() turns a transport error or timeout into a DistributedMuonError."""

    def __init__(self, comm: Collectives, work, what: str):
        self._comm, self._work, self._what = comm, work, what

    def wait(self) -> None:
        if self._work is None:
            return
        try:
            self._work.wait()
        except Exception as exc:
            raise self._comm.peer_failure(self._what, exc) from exc
        self._work = None


class Collectives:
    """Async collectives over `group` that count bytes into `self.bytes` (reset by `new_step`); `label`
    names the optimizer in failure messages."""

    def __init__(self, group=None, label: str = "DistributedMuon"):
        self.group, self.label = group, label
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.bytes: dict[str, dict[str, int]] = defaultdict(lambda: {"sent": 0, "received": 0})
        self.step = 0

    def new_step(self) -> None:
        self.bytes = defaultdict(lambda: {"sent": 0, "received": 0})
        self.step += 1

    def _count(self, kind: str, sent: int, received: int) -> None:
        self.bytes[kind]["sent"] += int(sent)
        self.bytes[kind]["received"] += int(received)

    def reduce_scatter(self, out: Tensor, inp: Tensor, what: str) -> _Handle:
        n = self.world_size
        self._count("reduce_scatter", _element_bytes(inp) * (n - 1) // n, _element_bytes(inp) * (n - 1) // n)
        return self._issue(what, dist.reduce_scatter_single if hasattr(dist, "reduce_scatter_single")
                           else dist.reduce_scatter_tensor, out, inp, op=dist.ReduceOp.SUM)

    def all_gather(self, out: Tensor, inp: Tensor, what: str) -> _Handle:
        n = self.world_size
        self._count("all_gather", _element_bytes(out) * (n - 1) // n, _element_bytes(out) * (n - 1) // n)
        return self._issue(what, dist.all_gather_single if hasattr(dist, "all_gather_single")
                           else dist.all_gather_into_tensor, out, inp)

    def all_to_all(self, out: Tensor, inp: Tensor, out_splits: list[int], in_splits: list[int],
                   kind: str, what: str) -> _Handle:
        e = inp.element_size()
        me = self.rank
        self._count(kind, (sum(in_splits) - in_splits[me]) * e, (sum(out_splits) - out_splits[me]) * e)
        return self._issue(what, dist.all_to_all_single, out, inp, out_splits, in_splits)

    def all_reduce(self, t: Tensor, what: str, op=dist.ReduceOp.SUM) -> _Handle:
        n = self.world_size
        volume = 2 * _element_bytes(t) * (n - 1) // n
        self._count("all_reduce", volume, volume)
        return self._issue(what, dist.all_reduce, t, op=op)

    def _issue(self, what: str, fn, *args, **kwargs) -> _Handle:
        try:
            work = fn(*args, group=self.group, async_op=True, **kwargs)
        except Exception as exc:
            raise self.peer_failure(what, exc) from exc
        return _Handle(self, work, what)

    # -- failures -----------------------------------------------------------------------------

    def record_failure(self, exc: BaseException) -> None:
        """Called on the rank that raised: leaves "rank r failed: …" where the other ranks look."""
        store = _store()
        if store is None:
            return
        rank = dist.get_rank()
        message = f"rank {rank} failed in {self.label}.step {self.step}: {type(exc).__name__}: {exc}"
        with contextlib.suppress(Exception):  # the store may be gone too; the raise on this rank stands
            store.set(_FAILURE_KEY.format(rank=dist.get_rank()), message[:2000])

    def failures(self) -> list[str]:
        """Failure records of ranks of the default group (empty when there is no store)."""
        store = _store()
        if store is None:
            return []
        found = []
        for r in range(dist.get_world_size()):
            key = _FAILURE_KEY.format(rank=r)
            try:
                if r != dist.get_rank() and store.check([key]):
                    found.append(store.get(key).decode(errors="replace"))
            except Exception:  # noqa: BLE001 - store unreachable (its host rank died)
                break
        return found

    def peer_failure(self, what: str, exc: BaseException) -> DistributedMuonError:
        records = self.failures()
        cause = ("; ".join(records) if records else
                 "another rank raised, died or was slower than the process-group timeout (no failure record)")
        return DistributedMuonError(
            f"{self.label}: rank {self.rank} stopped waiting for {what} in step {self.step}: {cause}. "
            f"Transport error: {type(exc).__name__}: {str(exc).strip()[:500]}"
        )


def check_same_everywhere(signature: list[tuple], group=None, device: torch.device | str = "cpu",
                          what: str = "parameter list") -> None:
    """Raises ValueError on every rank when `signature` differs between ranks, naming the first difference.
    `device` is where the backend reduces (CUDA for NCCL)."""
    digest = hashlib.sha256(repr(signature).encode()).digest()
    mine = torch.tensor([struct.unpack("<q", digest[:8])[0]], dtype=torch.int64, device=device)
    n = dist.get_world_size(group)
    everyone = torch.empty(n, dtype=torch.int64, device=device)
    (dist.all_gather_single if hasattr(dist, "all_gather_single") else dist.all_gather_into_tensor)(
        everyone, mine, group=group)
    if bool((everyone == everyone[0]).all().cpu()):
        return
    signatures: list = [None] * n
    dist.all_gather_object(signatures, signature, group=group)
    ref = signatures[0]
    for r, sig in enumerate(signatures[1:], start=1):
        if sig == ref:
            continue
        if len(sig) != len(ref):
            detail = f"rank 0 has {len(ref)} entries, rank {r} has {len(sig)}"
        else:
            i = next(i for i, (a, b) in enumerate(zip(ref, sig)) if a != b)
            detail = f"entry {i}: rank 0 has {ref[i]}, rank {r} has {sig[i]}"
        raise ValueError(f"DistributedMuon: the {what} differs between ranks ({detail}); every rank must "
                         "build the optimizer over the same parameters, in the same order, with the same "
                         "shapes, dtypes and routing")
