"""Shared test fixtures: the device list (CPU always; CUDA when present, never queried at import)."""

import pytest
import torch


def _cuda_available() -> bool:
    return torch.cuda.is_available()


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    """Every device test runs on CPU; the CUDA variant is skipped, not crashed, without a GPU."""
    if request.param == "cuda" and not _cuda_available():
        pytest.skip("no CUDA device")
    return torch.device(request.param)
