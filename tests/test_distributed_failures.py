"""DistributedMuon when something goes wrong: a rank raising mid-step, parameter lists that differ
between ranks, a non-finite or malformed gradient on one rank only (gloo on CPU, several processes)."""

from __future__ import annotations

import time

import pytest
import torch

from .dist_harness import spawn_job
from .test_distributed import LR, SMALL_BUCKET_MB, make_params, rank_grads


def _set_grads(params, grads):
    for k, p in params.items():
        p.grad = grads[k].clone()


def fault_job(rank: int, world: int) -> str:
    """Rank 1's Newton–Schulz raises in the third step; every rank runs until its step raises."""
    import muonext.ops
    from muonext.optim import DistributedMuon

    params = make_params()
    opt = DistributedMuon(list(params.items()), lr=LR, ns_dtype=torch.float32, bucket_mb=SMALL_BUCKET_MB)
    real, calls = muonext.ops.newton_schulz_grouped, [0]

    def faulty(*args, **kwargs):
        calls[0] += 1
        if rank == 1 and calls[0] > 2 * len([p for p in opt._plans if p is not None]):
            raise RuntimeError("injected fault in Newton-Schulz")
        return real(*args, **kwargs)

    muonext.ops.newton_schulz_grouped = faulty
    for step in range(6):
        _set_grads(params, rank_grads(step, rank))
        opt.step()
    return "finished all steps"


def checks_job(rank: int, world: int) -> dict:
    from muonext.optim import DistributedMuon, DistributedMuonError, NonFiniteGradientError

    out = {}
    params = make_params()
    if rank == 1:
        params["w_in"] = torch.nn.Parameter(torch.zeros(20, 12))
    try:
        DistributedMuon(list(params.items()), lr=LR)
        out["mismatch"] = "constructed"
    except ValueError as exc:
        out["mismatch"] = str(exc)

    grads = rank_grads(0, rank)
    if rank == 1:
        grads["experts"][1, 2, 3] = float("nan")
    params = make_params()
    opt = DistributedMuon(list(params.items()), lr=LR, mode="owner")
    _set_grads(params, grads)
    try:
        opt.step()
        out["nonfinite"] = "stepped"
    except NonFiniteGradientError as exc:
        out["nonfinite"] = str(exc)
    skipping = DistributedMuon(list(params.items()), lr=LR, skip_nonfinite=True)
    before = {k: p.detach().clone() for k, p in params.items()}
    skipping.step()
    out["skip"] = (skipping.skipped_steps,
                   all(torch.equal(before[k], p.detach()) for k, p in params.items()))
    _set_grads(params, rank_grads(1, rank))
    skipping.step()
    out["after_skip_changed"] = not torch.equal(before["w_in"], params["w_in"].detach())

    _set_grads(params, rank_grads(2, rank))
    if rank == 1:
        params["w_out"].grad = torch.zeros(20, 12).to_sparse()
    try:
        opt.step()
        out["bad_grad"] = "stepped"
    except (TypeError, DistributedMuonError) as exc:
        out["bad_grad"] = f"{type(exc).__name__}: {exc}"
    return out


@pytest.mark.distributed
def test_a_rank_raising_mid_step_fails_the_others_naming_it():
    start = time.monotonic()
    job = spawn_job(fault_job, 3, timeout=90)
    elapsed = time.monotonic() - start
    status = {r: s for r, (s, _) in job.items()}
    assert status == {0: "error", 1: "error", 2: "error"}, f"{job=}"
    assert "injected fault" in job[1][1], f"{job[1]=}"
    for r in (0, 2):
        message = job[r][1]
        assert "DistributedMuonError" in message and "rank 1 failed" in message, f"rank {r}: {message}"
        assert "injected fault" in message, f"rank {r}: {message}"
    assert elapsed < 60, f"{elapsed=}"


@pytest.mark.distributed
def test_mismatch_nonfinite_and_bad_gradients_are_agreed_across_ranks():
    job = spawn_job(checks_job, 2)
    assert all(s == "ok" for s, _ in job.values()), f"{job=}"
    for rank, (_, out) in job.items():
        assert "differs between ranks" in out["mismatch"] and "(20, 12)" in out["mismatch"], f"{rank=} {out=}"
        assert "non-finite" in out["nonfinite"] and "experts" in out["nonfinite"], f"{rank=} {out=}"
        assert out["skip"] == (1, True), f"{rank=} {out=}"
        assert out["after_skip_changed"], f"{rank=} {out=}"
    assert job[1][1]["bad_grad"].startswith("TypeError") and "w_out" in job[1][1]["bad_grad"], job[1]
    assert job[0][1]["bad_grad"].startswith("DistributedMuonError") and "[1]" in job[0][1]["bad_grad"], job[0]


def dtensor_fault_job(rank: int, world: int, how: str) -> str:
    """Muon on row-sharded DTensors; in the third step rank 1's Newton–Schulz raises or the process dies."""
    import os

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import muonext.ops
    from muonext.optim import Muon

    mesh = init_device_mesh("cpu", (world,))
    params = {k: torch.nn.Parameter(distribute_tensor(p.detach(), mesh, [Shard(0)]))
              for k, p in make_params().items()}
    opt = Muon(list(params.items()), lr=LR, ns_dtype=torch.float32)
    real, calls = muonext.ops.newton_schulz_grouped, [0]

    def faulty(*args, **kwargs):
        calls[0] += 1
        if rank == 1 and calls[0] > 4:
            if how == "exit":
                os._exit(3)
            raise RuntimeError("injected fault in Newton-Schulz")
        return real(*args, **kwargs)

    muonext.ops.newton_schulz_grouped = faulty
    for step in range(6):
        grads = rank_grads(step, rank)
        for k, p in params.items():
            p.grad = distribute_tensor(grads[k], mesh, [Shard(0)])
        opt.step()
    return "finished all steps"


@pytest.mark.distributed
@pytest.mark.parametrize("how", ["raise", "exit"])
def test_muon_on_dtensors_fails_every_rank_when_one_raises_or_dies(how):
    start = time.monotonic()
    job = spawn_job(dtensor_fault_job, 3, how, timeout=90)
    elapsed = time.monotonic() - start
    assert {r: s for r, (s, _) in job.items()} == {0: "error", 1: "error", 2: "error"}, f"{job=}"
    for r in (0, 2):
        message = job[r][1]
        assert message.startswith("DistributedMuonError: Muon: rank"), f"rank {r}: {message}"
        if how == "raise":
            assert "rank 1 failed in Muon.step" in message, f"rank {r}: {message}"
            assert "injected fault" in message, f"rank {r}: {message}"
    assert elapsed < 60, f"{elapsed=}"  # well inside the harness's 20 s process-group timeout per collective
