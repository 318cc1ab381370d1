"""Runs a function in several fresh processes joined by a gloo process group (the distributed tests'
harness): every rank's result or traceback comes back to the test; a rank that hangs is killed."""

from __future__ import annotations

import os
import queue
import tempfile
import time
import traceback
from datetime import timedelta

import torch

JOB_TIMEOUT_S = 120


def _entry(fn, rank, world, init, results, args):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    import torch.distributed as dist

    try:
        dist.init_process_group(
            "gloo", init_method=init, rank=rank, world_size=world, timeout=timedelta(seconds=20)
        )
        results.put((rank, "ok", fn(rank, world, *args)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent with the traceback
        results.put((rank, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def spawn_job(fn, world: int, *args, timeout: float = JOB_TIMEOUT_S) -> dict[int, tuple[str, object]]:
    """Runs fn(rank, world, *args) in `world` fresh processes (gloo, file:// rendezvous); returns
    {rank: ("ok", result) or ("error", message)}. Stragglers past `timeout` are killed and reported."""
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{os.path.join(tmp, 'rendezvous')}"
        procs = [ctx.Process(target=_entry, args=(fn, r, world, init, results, args)) for r in range(world)]
        for p in procs:
            p.start()
        out: dict[int, tuple[str, object]] = {}
        deadline = time.monotonic() + timeout
        while len(out) < world and time.monotonic() < deadline:
            try:
                rank, status, value = results.get(timeout=1.0)
                out[rank] = (status, value)
            except queue.Empty:
                if all(not p.is_alive() for p in procs) and results.empty():
                    break
        for p in procs:
            p.join(timeout=max(1.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        for r in range(world):
            out.setdefault(r, ("error", f"rank {r} hung or died without a report (timeout {timeout}s)"))
        return out


def ok_results(job: dict) -> list:
    errors = {r: v for r, (s, v) in job.items() if s != "ok"}
    assert not errors, f"distributed job failed: {errors}"
    return [job[r][1] for r in sorted(job)]
