"""What Muon needs to know about a DTensor parameter (FSDP2's `fully_shard`, expert parallelism).

Every parameter falls into one of two kinds, decided once at construction from its placements:

* **whole matrices here**: a plain tensor, a replicated DTensor, or a DTensor sharded only on a batch
  dim (dim 0 of a 3-D expert stack (E, A, B), as FSDP2 and expert parallelism shard it). Every matrix
  of the local tensor is complete: Newton–Schulz runs where it lies, with no communication.
* **split matrices** (`SplitParam`): exactly one mesh dim shards a matrix dim (FSDP2's `Shard(0)` of a
  2-D weight or of a ≥4-D tensor, `Shard(1)`/`Shard(2)` of an expert stack); other mesh dims replicate
  it or shard a batch dim. The ranks of that mesh dim hold each matrix in pieces of `torch.chunk`
  sizes (trailing ranks may hold nothing); `owner_exchange.py` reassembles them on one owner.

Refused with a message naming the parameter: `Partial` placements (a pending reduction), two mesh dims
on matrix dims, and a strided shard of a matrix dim.

Replicated copies (HSDP's `dp_replicate`, or plain tensors under data parallelism) each run the same
update; `replication(p)` says how many ranks hold each element, so sums over ranks can count it once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.distributed as dist
from torch import Tensor

try:
    from torch.distributed.tensor import DTensor, Partial, Shard
    from torch.distributed.tensor.placement_types import _StridedShard
except ImportError:  # a torch without DTensor: every parameter is a plain tensor
    DTensor = Partial = Shard = _StridedShard = None

__all__ = ["SplitParam", "is_dtensor", "local", "replication", "split_param"]


def is_dtensor(t) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """The tensor this rank holds: a DTensor's local shard (a view: in-place ops reach the DTensor)."""
    return t.to_local() if is_dtensor(t) else t


def _shard_dim(placement) -> int | None:
    if isinstance(placement, Shard):
        return placement.dim
    if _StridedShard is not None and isinstance(placement, _StridedShard):
        return placement.dim
    return None


def replication(t: Tensor) -> int:
    """How many ranks of the world hold each element of `t` (plain tensors: every rank)."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if not is_dtensor(t):
        return world
    shards = math.prod(
        t.device_mesh.size(d) for d, pl in enumerate(t.placements) if _shard_dim(pl) is not None
    )
    return max(1, world // shards)


def chunk_sizes(length: int, parts: int) -> list[int]:
    """Lengths of `torch.chunk(length, parts)` padded with zeros to `parts` entries (DTensor's Shard)."""
    step = -(-length // parts) if length else 0
    return [max(0, min(step, length - i * step)) for i in range(parts)]


@dataclass(frozen=True)
class SplitParam:
    """A parameter whose matrices the ranks of one mesh dim hold in pieces along tensor dim `dim`."""

    name: str
    group: object  # the process group of the splitting mesh dim (this rank's)
    group_key: tuple  # the same for every rank of that group; orders and groups exchanges
    group_rank: int
    group_size: int
    dim: int  # tensor dim the group splits
    sizes: tuple[int, ...]  # local length along `dim` on each group rank
    local_shape: tuple[int, ...]

    @property
    def full_shape(self) -> tuple[int, ...]:
        """The shape the group holds together (this rank's local shape, whole along `dim`)."""
        shape = list(self.local_shape)
        shape[self.dim] = sum(self.sizes)
        return tuple(shape)

    def shape_on(self, group_rank: int) -> tuple[int, ...]:
        shape = list(self.local_shape)
        shape[self.dim] = self.sizes[group_rank]
        return tuple(shape)


def split_param(name: str, p: Tensor) -> SplitParam | None:
    """None when every matrix of `p`'s local tensor is whole; else how its matrices are split."""
    if not is_dtensor(p):
        return None
    batch_dims = 1 if p.dim() == 3 else 0  # a 3-D expert stack's dim 0 is a batch of matrices
    splitting = []
    for mesh_dim, pl in enumerate(p.placements):
        if Partial is not None and isinstance(pl, Partial):
            raise ValueError(
                f"Muon: parameter {name} has a Partial placement {p.placements} (a pending "
                "reduction); redistribute it to Shard or Replicate first"
            )
        d = _shard_dim(pl)
        if d is not None and d >= batch_dims:
            if _StridedShard is not None and isinstance(pl, _StridedShard):
                raise ValueError(
                    f"Muon: parameter {name} has a strided shard of matrix dim {d} "
                    f"({p.placements}); only plain Shard of a matrix dim is supported"
                )
            splitting.append((mesh_dim, d))
    if not splitting:
        return None
    if len(splitting) > 1:
        raise ValueError(
            f"Muon: parameter {name} is split on matrix dims by {len(splitting)} mesh dims "
            f"({p.placements} on {p.device_mesh}); Newton–Schulz supports one"
        )
    mesh_dim, d = splitting[0]
    mesh = p.device_mesh
    group = mesh.get_group(mesh_dim)
    size = mesh.size(mesh_dim)
    group_rank = dist.get_rank(group)
    local_shape = tuple(p.to_local().shape)
    sizes = tuple(chunk_sizes(p.shape[d], size))  # no other mesh dim cuts a matrix dim (refused above)
    if sizes[group_rank] != local_shape[d]:
        raise ValueError(
            f"Muon: parameter {name}'s local shard has {local_shape[d]} entries along dim {d}, "
            f"expected {sizes[group_rank]} (torch.chunk of {p.shape[d]} over {size} ranks)"
        )
    ranks = tuple(dist.get_process_group_ranks(group))
    return SplitParam(name, group, ranks, group_rank, size, d, sizes, local_shape)
