"""Process setup: device choice, torch.distributed (torchrun: WORLD_SIZE > 1; gloo on CPU, NCCL on GPU)
and the device mesh of a parallel run (`muonext.parallel`: dp_replicate × dp_shard ranks, ep carved
out of dp_shard).

Every rank is a data-parallel rank and reads its own rows of the global batch. With dp_shard > 1 the
model is sharded by FSDP2 (HSDP over dp_replicate, experts over ep); with dp_shard = 1 and several
processes it is replicated and torch's DDP (`replicate`) averages the gradients.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..parallel import ParallelDims, ParallelMesh, build_mesh


@dataclass
class Runtime:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # we initialised the process group (and destroy it at the end)
    mesh: ParallelMesh | None = None  # the device mesh when distributed

    @property
    def sharded(self) -> bool:
        """FSDP2 (and expert parallelism): parameters are DTensors."""
        return self.mesh is not None and self.mesh.dims.dp_shard > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (in place; a no-op in one process). Works for any dtype gloo/NCCL support."""
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup_runtime(device: str = "auto", dp_replicate: int = 1, dp_shard: int = -1, ep: int = 1) -> Runtime:
    """The device and process group of this rank, and the mesh (`dp_shard=-1`: what dp_replicate leaves)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = f"cuda:{local}"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"TrainConfig.device={device!r} but CUDA is not available")
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        owns = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    try:
        dims = ParallelDims.for_world(world, dp_replicate, dp_shard, ep)
    except ValueError:
        if owns:
            dist.destroy_process_group()
        raise
    mesh = build_mesh(dims, dev.type) if world > 1 else None
    return Runtime(rank, world, local, dev, owns, mesh)


