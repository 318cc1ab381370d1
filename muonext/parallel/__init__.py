"""Training beyond one device on torch.distributed's own engine (DESIGN.md §8): a named device mesh,
FSDP2 per decoder layer, expert parallelism with all_to_all token dispatch, and the helpers the
trainer needs around them (whole state dicts for export, gradient norms over mixed meshes)."""

from .expert_parallel import ExpertParallel
from .mesh import ParallelDims, ParallelMesh, build_mesh
from .parallelize import full_state_dict, materialize, parallelize_moonlight

__all__ = [
    "ExpertParallel",
    "ParallelDims",
    "ParallelMesh",
    "build_mesh",
    "full_state_dict",
    "materialize",
    "parallelize_moonlight",
]
