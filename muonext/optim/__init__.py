"""Optimizers: Muon (single process) and its building blocks."""

from .coefficients import KELLER, POLAR_EXPRESS, ns_schedule
from .muon import Muon, NonFiniteGradientError, matrix_shape
from .routing import is_muon_param, muon_param_groups

__all__ = [
    "Muon",
    "NonFiniteGradientError",
    "muon_param_groups",
    "is_muon_param",
    "ns_schedule",
    "matrix_shape",
    "KELLER",
    "POLAR_EXPRESS",
]
