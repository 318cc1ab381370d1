"""Optimizers: Muon (single process), DistributedMuon (ZeRO-1), QK-clip and their building blocks."""

from .coefficients import KELLER, POLAR_EXPRESS, ns_schedule
from .dist_comm import DistributedMuonError
from .distributed import DistributedMuon
from .distributed_state import to_muon_state_dict
from .muon import Muon, NonFiniteGradientError, matrix_shape
from .qk_clip import QKClip
from .routing import is_muon_param, muon_param_groups

__all__ = [
    "Muon",
    "DistributedMuon",
    "DistributedMuonError",
    "to_muon_state_dict",
    "NonFiniteGradientError",
    "QKClip",
    "muon_param_groups",
    "is_muon_param",
    "ns_schedule",
    "matrix_shape",
    "KELLER",
    "POLAR_EXPRESS",
]
