"""Per-bucket plan of DistributedMuon's Newton–Schulz traffic for one rank (static: built once from the
layout, the mode and the owners).

Buffers of one bucket on rank r (all 1-D views, NS dtype):
  local    the momentum-updated pieces U of r's Muon pieces, end to end in bucket order ("u_local");
           after NS the same layout holds r's part of the orthogonalised update O ("o_local")
  batch b  NS input/output of the b-th batch of equal-shape matrices r orthogonalises, (count, rows, cols)

mode="gather": every holder of a unit receives the other holders' pieces of it (one all_to_all), runs
NS, and keeps its own part (`keep`). mode="owner": the pieces go to the unit's owner only (all_to_all),
the owner runs NS, and the update pieces go back to the holders (a second all_to_all, `scatter_*`).
A rank's own pieces travel through the same all_to_all as a self-send, which keeps one code path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import ops
from .shard_layout import Piece, ShardLayout, Unit, ns_flops

__all__ = ["LOCAL", "Batch", "BucketPlan", "Segments", "build_plans"]

LOCAL = -1  # Segments.refs value naming the bucket's local buffer (u_local / o_local)


@dataclass
class Segments:
    """Element ranges [offsets[i], offsets[i] + lengths[i]) of the tensors named by refs[i] (LOCAL or a
    batch index), in wire order; splits[q] counts the elements exchanged with rank q."""

    refs: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    splits: list[int] = field(default_factory=list)

    def add(self, ref: int, offset: int, length: int) -> None:
        self.refs.append(ref)
        self.offsets.append(offset)
        self.lengths.append(length)

    def pack(self, resolve: Callable[[int], Tensor], dtype: torch.dtype, device: torch.device) -> Tensor:
        """The ranges, end to end, as one flat `dtype` tensor."""
        if not self.refs:
            return torch.empty(0, dtype=dtype, device=device)
        return ops.pack([resolve(r) for r in self.refs], dtype, self.offsets, self.lengths)

    def unpack_(self, flat: Tensor, resolve: Callable[[int], Tensor]) -> None:
        """Writes consecutive parts of flat into the ranges (inverse of pack)."""
        if self.refs:
            ops.unpack_(flat, [resolve(r) for r in self.refs], self.offsets, self.lengths)

    def off_rank(self, rank: int) -> int:
        """Elements exchanged with ranks other than `rank`."""
        return sum(self.splits) - self.splits[rank]


@dataclass
class Batch:
    """Equal-shape matrices of one param group that this rank orthogonalises together."""

    group: int
    rows: int
    cols: int
    units: list[Unit] = field(default_factory=list)


@dataclass
class BucketPlan:
    bucket: int
    pieces: list[Piece]                # this rank's Muon pieces in the bucket, in local-buffer order
    local_offsets: list[int]           # where each piece starts in the local buffer
    local_length: int
    batches: list[Batch]
    gather_send: Segments              # LOCAL → wire, split by destination
    gather_recv: Segments              # wire → batches, split by source
    keep: Segments | None              # gather mode: batches → local buffer order
    scatter_send: Segments | None      # owner mode: batches → wire, split by destination
    scatter_recv: Segments | None      # owner mode: wire → LOCAL, split by source
    needs_collective: bool             # some rank in the world exchanges pieces off-rank in this bucket

    @property
    def ns_flops(self) -> int:
        """Multiply-adds per NS step of this rank's batches."""
        return sum(ns_flops(b.rows, b.cols) * len(b.units) for b in self.batches)


def build_plans(layout: ShardLayout, rank: int, mode: str,
                owners: dict[tuple[int, int], int] | None) -> list[BucketPlan | None]:
    """One plan per bucket (None where the bucket holds no Muon matrix)."""
    n = layout.world_size

    def runs_ns(u: Unit, q: int) -> bool:
        if mode == "gather":
            return q in layout.holders(u)
        return owners[(u.param, u.k)] == q

    plans: list[BucketPlan | None] = []
    all_pieces = layout.pieces(rank)
    for b in range(len(layout.buckets)):
        units = [u for u in layout.units if u.bucket == b]
        if not units:
            plans.append(None)
            continue
        pieces = [pc for pc in all_pieces if pc.bucket == b and layout.params[pc.param].use_muon]
        local_offsets, total, piece_of = [], 0, {}
        for pc in pieces:
            local_offsets.append(total)
            piece_of[pc.param] = (pc, total)
            total += pc.length

        def local_offset(u: Unit, a: int, piece_of=piece_of) -> int:
            pc, off = piece_of[u.param]
            return off + a - (layout.start_of[u.param] + pc.param_offset)

        batches: list[Batch] = []
        where: dict[tuple[int, int], tuple[int, int]] = {}  # unit → (batch, flat offset in batch)
        by_key: dict[tuple[int, int, int], int] = {}
        for u in units:
            if runs_ns(u, rank):
                key = (u.group, u.rows, u.cols)
                if key not in by_key:
                    by_key[key] = len(batches)
                    batches.append(Batch(*key))
                bi = by_key[key]
                where[(u.param, u.k)] = (bi, len(batches[bi].units) * u.size)
                batches[bi].units.append(u)

        gather_send, gather_recv = Segments(), Segments()
        for q in range(n):
            sent = got = 0
            for u in units:
                a, z = layout.overlap(u, rank)
                if z > a and runs_ns(u, q):
                    gather_send.add(LOCAL, local_offset(u, a), z - a)
                    sent += z - a
                a, z = layout.overlap(u, q)
                if z > a and runs_ns(u, rank):
                    bi, off = where[(u.param, u.k)]
                    gather_recv.add(bi, off + a - u.start, z - a)
                    got += z - a
            gather_send.splits.append(sent)
            gather_recv.splits.append(got)

        keep = scatter_send = scatter_recv = None
        if mode == "gather":
            keep = Segments()
            for u in units:
                a, z = layout.overlap(u, rank)
                if z > a:
                    bi, off = where[(u.param, u.k)]
                    keep.add(bi, off + a - u.start, z - a)
            needs_collective = any(len(layout.holders(u)) > 1 for u in units)
        else:
            scatter_send, scatter_recv = Segments(), Segments()
            for q in range(n):
                sent = got = 0
                for u in units:
                    owner = owners[(u.param, u.k)]
                    a, z = layout.overlap(u, q)
                    if z > a and owner == rank:
                        bi, off = where[(u.param, u.k)]
                        scatter_send.add(bi, off + a - u.start, z - a)
                        sent += z - a
                    a, z = layout.overlap(u, rank)
                    if z > a and owner == q:
                        scatter_recv.add(LOCAL, local_offset(u, a), z - a)
                        got += z - a
                scatter_send.splits.append(sent)
                scatter_recv.splits.append(got)
            needs_collective = any(layout.holders(u) != [owners[(u.param, u.k)]] for u in units)
        plans.append(BucketPlan(b, pieces, local_offsets, total, batches, gather_send, gather_recv, keep,
                                scatter_send, scatter_recv, needs_collective))
    return plans


def batch_views(plan: BucketPlan, dtype: torch.dtype, device: torch.device) -> list[Tensor]:
    """Fresh (count, rows, cols) NS input tensors for the plan's batches."""
    return [torch.empty(len(b.units), b.rows, b.cols, dtype=dtype, device=device) for b in plan.batches]


def resolver(local: Tensor, batches: Sequence[Tensor]) -> Callable[[int], Tensor]:
    """Maps a Segments ref to its tensor: LOCAL → the 1-D local buffer, b → batch b."""
    return lambda ref: local if ref == LOCAL else batches[ref]
