"""muonext: Muon at scale (Moonlight) and Kimi k1.5 RL.

Importing never fails and never touches CUDA: `HAS_EXT` says whether the compiled kernels loaded,
`HAS_CUDA_EXT` whether they include CUDA kernels.
"""

from ._extension import BUILD_INFO, HAS_CUDA_EXT, HAS_EXT, LOAD_ERROR
from .version import __version__

__all__ = ["__version__", "HAS_EXT", "HAS_CUDA_EXT", "BUILD_INFO", "LOAD_ERROR"]
