"""The flat, bucketed ZeRO-1 layout of DistributedMuon's parameters (DESIGN.md §3).

Parameters (in param-group order) are laid end to end in buckets of one dtype, each at most
`bucket_bytes` unless a single parameter is larger. A bucket of `length` elements is padded to
`padded = shard · world_size`; rank r owns the contiguous slice [r·shard, (r + 1)·shard) of every
bucket. A slice may cut a parameter anywhere, including mid-row of a matrix.

Vocabulary used by the optimizer and its tests:
  piece  the part of one parameter inside one rank's slice (at most one per parameter and rank)
  unit   one matrix Newton–Schulz sees: a 2-D parameter, one expert of a 3-D (E, A, B) stack, or a
         ≥4-D tensor viewed as (shape[0], rest) — the `matrix_shape` rule of `Muon`
  holders(unit)  the ranks whose slices intersect the unit
  owner(unit)    the one rank that runs its Newton–Schulz in mode="owner"
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .shapes import balanced_owners, matrix_shape, ns_flops

__all__ = ["ParamInfo", "Piece", "ShardLayout", "Unit", "assign_owners", "ns_flops"]


@dataclass(frozen=True)
class ParamInfo:
    """One parameter as the layout sees it; `index` is its position in param-group order."""

    index: int
    name: str
    group: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    use_muon: bool

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Piece:
    """Elements [param_offset, param_offset + length) of parameter `param`, held by one rank, at
    `shard_offset` in that rank's slice of `bucket`."""

    param: int
    bucket: int
    param_offset: int
    length: int
    shard_offset: int


@dataclass(frozen=True)
class Unit:
    """Matrix `k` (rows × cols) of parameter `param`: elements [start, start + rows·cols) of `bucket`."""

    param: int
    k: int
    bucket: int
    start: int
    rows: int
    cols: int
    group: int

    @property
    def size(self) -> int:
        return self.rows * self.cols

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass
class _Bucket:
    dtype: torch.dtype
    params: list[int]
    length: int = 0
    padded: int = 0
    shard: int = 0


class ShardLayout:
    """Bucket and slice arithmetic for `params` over `world_size` ranks (a pure function of its inputs,
    so every rank computes the same layout)."""

    def __init__(self, params: list[ParamInfo], world_size: int, bucket_bytes: int):
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if bucket_bytes < 1:
            raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
        self.params = list(params)
        self.world_size = world_size
        self.bucket_bytes = bucket_bytes
        self.buckets: list[_Bucket] = []
        self.bucket_of: list[int] = []
        self.start_of: list[int] = []
        open_bucket: dict[torch.dtype, int] = {}
        for p in self.params:
            b = open_bucket.get(p.dtype)
            capacity = max(1, bucket_bytes // p.dtype.itemsize)
            if b is None or (self.buckets[b].length and self.buckets[b].length + p.numel > capacity):
                b = len(self.buckets)
                self.buckets.append(_Bucket(p.dtype, []))
                open_bucket[p.dtype] = b
            bucket = self.buckets[b]
            self.bucket_of.append(b)
            self.start_of.append(bucket.length)
            bucket.params.append(p.index)
            bucket.length += p.numel
        for bucket in self.buckets:
            bucket.shard = -(-bucket.length // world_size)
            bucket.padded = bucket.shard * world_size
        self.units: list[Unit] = []
        for p in self.params:
            if not p.use_muon:
                continue
            count, rows, cols = matrix_shape(p.shape)
            for k in range(count):
                self.units.append(Unit(p.index, k, self.bucket_of[p.index],
                                       self.start_of[p.index] + k * rows * cols, rows, cols, p.group))

    # -- slices -------------------------------------------------------------------------------

    def slice_of(self, bucket: int, rank: int) -> tuple[int, int]:
        """[lo, hi) of `bucket` owned by `rank`."""
        shard = self.buckets[bucket].shard
        return rank * shard, (rank + 1) * shard

    def pieces(self, rank: int) -> list[Piece]:
        """Every parameter piece in `rank`'s slices, in bucket order then bucket position."""
        out = []
        for b, bucket in enumerate(self.buckets):
            lo, hi = self.slice_of(b, rank)
            for i in bucket.params:
                start, end = self.start_of[i], self.start_of[i] + self.params[i].numel
                a, z = max(start, lo), min(end, hi)
                if a < z:
                    out.append(Piece(i, b, a - start, z - a, a - lo))
        return out

    def holders(self, unit: Unit) -> list[int]:
        shard = self.buckets[unit.bucket].shard
        return list(range(unit.start // shard, (unit.end - 1) // shard + 1))

    def overlap(self, unit: Unit, rank: int) -> tuple[int, int]:
        """[lo, hi) of the unit (bucket coordinates) inside `rank`'s slice; lo == hi when disjoint."""
        lo, hi = self.slice_of(unit.bucket, rank)
        a, z = max(unit.start, lo), min(unit.end, hi)
        return (a, z) if a < z else (a, a)

    # -- description (checkpoints, cross-rank checks) ------------------------------------------

    def describe(self) -> dict:
        return {
            "world_size": self.world_size,
            "bucket_bytes": self.bucket_bytes,
            "params": [
                {"index": p.index, "name": p.name, "group": p.group, "shape": list(p.shape),
                 "dtype": str(p.dtype), "use_muon": p.use_muon, "bucket": self.bucket_of[p.index],
                 "start": self.start_of[p.index]}
                for p in self.params
            ],
            "buckets": [{"dtype": str(b.dtype), "length": b.length, "padded": b.padded, "shard": b.shard}
                        for b in self.buckets],
        }

    def signature(self) -> list[tuple]:
        """What must agree across ranks: every parameter's name, group, shape, dtype and routing."""
        return [(p.name, p.group, tuple(p.shape), str(p.dtype), p.use_muon) for p in self.params]


def assign_owners(layout: ShardLayout, slack: float = 1.1) -> dict[tuple[int, int], int]:
    """Owner rank of every unit, keyed by (param, k) (`balanced_owners` over the units in bucket order)."""
    units = sorted(layout.units, key=lambda u: (u.bucket, u.start))
    held = [{r: layout.overlap(u, r)[1] - layout.overlap(u, r)[0] for r in layout.holders(u)} for u in units]
    owners = balanced_owners([ns_flops(u.rows, u.cols) for u in units], held, layout.world_size, slack)
    return {(u.param, u.k): owner for u, owner in zip(units, owners)}
