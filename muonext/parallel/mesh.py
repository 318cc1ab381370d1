"""The device mesh of a parallel run, with torchtitan's names and rules (DESIGN.md §8).

    world = dp_replicate × dp_shard          every rank is a data-parallel rank: it reads its own rows
    dp_shard = dp_shard_mod_ep × ep          expert parallelism is carved out of the sharded ranks

`ParallelMesh` holds three views of one world mesh (built by `init_device_mesh`, then unflattened):

    world     (dp,)                                  all ranks: data loading, metrics, agreement
    dense     (dp_replicate, dp_shard)               FSDP2 (HSDP when dp_replicate > 1) of all but experts
    experts   (dp_replicate, dp_shard_mod_ep, ep)    experts split over `ep`, FSDP over the rest
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

__all__ = ["ParallelDims", "ParallelMesh", "build_mesh"]


@dataclass(frozen=True)
class ParallelDims:
    dp_replicate: int = 1
    dp_shard: int = 1
    ep: int = 1

    def __post_init__(self) -> None:
        for name in ("dp_replicate", "dp_shard", "ep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ParallelDims.{name} must be a positive int, got {value!r}")
        if self.dp_shard % self.ep:
            raise ValueError(
                f"ParallelDims.ep ({self.ep}) must divide dp_shard ({self.dp_shard}): expert "
                "parallelism is carved out of the sharded data-parallel ranks"
            )

    @property
    def world_size(self) -> int:
        return self.dp_replicate * self.dp_shard

    @classmethod
    def for_world(
        cls, world_size: int, dp_replicate: int = 1, dp_shard: int = -1, ep: int = 1
    ) -> ParallelDims:
        """`dp_shard=-1` takes what dp_replicate leaves; the product must be the world size."""
        if dp_shard == -1:
            if world_size % dp_replicate:
                raise ValueError(f"dp_replicate ({dp_replicate}) must divide the world size ({world_size})")
            dp_shard = world_size // dp_replicate
        dims = cls(dp_replicate, dp_shard, ep)
        if dims.world_size != world_size:
            raise ValueError(
                f"dp_replicate × dp_shard = {dp_replicate} × {dp_shard} = {dims.world_size} must "
                f"equal the number of processes ({world_size})"
            )
        return dims


@dataclass(frozen=True)
class ParallelMesh:
    dims: ParallelDims
    world: DeviceMesh
    dense: DeviceMesh
    experts: DeviceMesh

    def _data_parallel(self, mesh: DeviceMesh, shard_dim: str) -> DeviceMesh:
        """FSDP's mesh: 1-D over `shard_dim`, or 2-D (dp_replicate, shard_dim) for HSDP."""
        return mesh["dp_replicate", shard_dim] if self.dims.dp_replicate > 1 else mesh[shard_dim]

    @property
    def dense_fsdp(self) -> DeviceMesh:
        return self._data_parallel(self.dense, "dp_shard")

    @property
    def expert_fsdp(self) -> DeviceMesh:
        return self._data_parallel(self.experts, "dp_shard_mod_ep")

    @property
    def ep(self) -> DeviceMesh:
        return self.experts["ep"]


def build_mesh(dims: ParallelDims, device_type: str) -> ParallelMesh:
    """The meshes of `dims` over every rank of the default process group."""
    world = dist.get_world_size()
    if dims.world_size != world:
        raise ValueError(f"the mesh {dims} has {dims.world_size} ranks, the process group {world}")
    mesh = init_device_mesh(device_type, (world,), mesh_dim_names=("dp",))
    dense = mesh._unflatten(0, (dims.dp_replicate, dims.dp_shard), ("dp_replicate", "dp_shard"))
    experts = mesh._unflatten(
        0, (dims.dp_replicate, dims.dp_shard // dims.ep, dims.ep), ("dp_replicate", "dp_shard_mod_ep", "ep")
    )
    return ParallelMesh(dims, mesh, dense, experts)
