"""`Muon` on DTensor parameters against single-process `Muon` on the whole tensors (gloo, CPU).

One spawned job per world size (4, 2, 3) runs three checks and reports relative errors:

* placements: parameters distributed by hand with every placement Muon handles (rows, columns and
  experts split; whole experts; replicated; plain tensors; a 2-D mesh with HSDP-style replication and
  a 3-D stack split on experts and rows at once), shapes that no world size divides, rank-local
  gradients averaged by hand: 5 steps of fp32 NS equal the reference to 1e-5, update RMS included;
* fully_shard: a small model with odd shapes sharded by FSDP2, trained 5 steps on each rank's slice
  of a batch, equals the reference trained on the whole batch;
* DCP: the world-4 job saves model and optimizer with `torch.distributed.checkpoint` after 3 steps;
  the world-2 and world-3 jobs load it and take the last 2 steps, ending where the reference ends.
"""

from __future__ import annotations

import math
import tempfile

import pytest
import torch

from .dist_harness import ok_results, spawn_job

pytestmark = pytest.mark.distributed

STEPS, LR, TOL = 5, 0.02, 1e-5
WORLD_SIZES = (4, 2, 3)  # 4 first: it writes the checkpoint the others resume from

# name -> (shape, placements on a 1-D mesh); None = a plain tensor, the same on every rank
PLACED = {
    "rows": ((37, 53), "S0"),
    "cols": ((29, 31), "S1"),
    "tiny_rows": ((5, 9), "S0"),
    "experts": ((5, 8, 12), "S0"),
    "expert_rows": ((3, 10, 7), "S1"),
    "conv": ((4, 2, 3, 3), "S0"),
    "replicated": ((6, 10), "R"),
    "plain": ((7, 5), None),
    "bias": ((13,), "S0"),
    "embed": ((11, 6), "S0"),
}
# a (2, world/2) mesh: (mesh dim 0, mesh dim 1) placements
PLACED_2D = {"hsdp_rows": ((19, 23), ("R", "S0")), "experts_x_rows": ((6, 9, 11), ("S0", "S1"))}


def _placement(code: str):
    from torch.distributed.tensor import Replicate, Shard

    return Replicate() if code == "R" else Shard(int(code[1]))


def _full(shapes: dict, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, (shape, _) in shapes.items()}


def _reference(shapes: dict, world: int, steps=range(STEPS)) -> dict[str, torch.Tensor]:
    from muonext.optim import Muon

    params = {k: torch.nn.Parameter(v * 0.1) for k, v in _full(shapes, 0).items()}
    opt = Muon(list(params.items()), lr=LR, ns_dtype=torch.float32)
    for step in steps:
        grads = [_full(shapes, 1000 * step + r) for r in range(world)]
        for k, p in params.items():
            p.grad = sum(g[k] for g in grads) / world
        opt.step()
    return {k: p.detach() for k, p in params.items()}, opt.update_rms


def _placements_check(rank: int, world: int) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor

    from muonext.optim import DistributedMuon, Muon

    shapes = dict(PLACED)
    meshes = {k: init_device_mesh("cpu", (world,)) for k in PLACED}
    places = {k: None if code is None else [_placement(code)] for k, (_, code) in PLACED.items()}
    if world % 2 == 0:
        mesh_2d = init_device_mesh("cpu", (2, world // 2))
        shapes.update(PLACED_2D)
        for k, (_, codes) in PLACED_2D.items():
            meshes[k], places[k] = mesh_2d, [_placement(c) for c in codes]

    def place(k, t):
        return t if places[k] is None else distribute_tensor(t, meshes[k], places[k])

    params = {k: torch.nn.Parameter(place(k, v * 0.1)) for k, v in _full(shapes, 0).items()}
    try:
        DistributedMuon(list(params.items()), lr=LR)
        zero1 = "constructed"
    except TypeError as exc:
        zero1 = str(exc)
    opt = Muon(list(params.items()), lr=LR, ns_dtype=torch.float32)
    for step in range(STEPS):
        grads = [_full(shapes, 1000 * step + r) for r in range(world)]
        for k, p in params.items():  # what a data-parallel reduction would leave: the mean
            p.grad = place(k, sum(g[k] for g in grads) / world)
        opt.step()
    want, want_rms = _reference(shapes, world)
    got = {k: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach() for k, p in params.items()}
    rms = opt.update_rms
    return {
        "params": {k: _rel(got[k], want[k]) for k in want},
        "rms": {k: abs(rms[k] - want_rms[k]) / want_rms[k] for k in want_rms},
        "bytes": opt.comm_bytes,
        "zero1": zero1,
    }


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# -- a model sharded by fully_shard ------------------------------------------------------------


class Block(torch.nn.Module):
    """Odd shapes on purpose: no world size divides them; the expert stack has fewer experts than ranks."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(13, 37)
        self.down = torch.nn.Linear(37, 13, bias=False)
        self.experts = torch.nn.Parameter(torch.randn(3, 13, 13) * 0.1)
        self.norm = torch.nn.LayerNorm(13)

    def forward(self, x):
        h = self.down(torch.tanh(self.up(x)))
        return self.norm(x + h + torch.einsum("bd,edf->bf", x, self.experts) / 3)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(17, 13)
        self.blocks = torch.nn.ModuleList([Block(), Block()])
        self.head = torch.nn.Linear(13, 17, bias=False)

    def forward(self, ids):
        x = self.embed(ids)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randint(0, 17, (12,), generator=g), torch.randint(0, 17, (12,), generator=g)


def _loss(model, ids, targets):
    return torch.nn.functional.cross_entropy(model(ids), targets)


def _train(model, opt, steps, rank=0, world=1):
    for step in steps:
        ids, targets = _batch(step)
        rows = slice(rank * 12 // world, (rank + 1) * 12 // world)  # equal slices: the mean of the means
        _loss(model, ids[rows], targets[rows]).backward()
        opt.step()
        opt.zero_grad()


def _fsdp_model(world: int):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = Net()
    mesh = init_device_mesh("cpu", (world,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _reference_model(steps=range(STEPS)):
    from muonext.optim import Muon, muon_param_groups

    torch.manual_seed(0)
    model = Net()
    opt = Muon(muon_param_groups(model, lr=LR), ns_dtype=torch.float32)
    _train(model, opt, steps)
    return model


def _fsdp_check(rank: int, world: int, ckpt: str) -> dict:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from muonext.optim import Muon, muon_param_groups

    model = _fsdp_model(world)
    opt = Muon(muon_param_groups(model, lr=LR), ns_dtype=torch.float32)
    want = {k: v.detach() for k, v in _reference_model().state_dict().items()}
    out = {}
    if world == 4:
        _train(model, opt, range(3), rank, world)
        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=ckpt)
        _train(model, opt, range(3, STEPS), rank, world)
    else:
        _train(model, opt, range(STEPS), rank, world)
        got = {k: v.full_tensor() for k, v in model.state_dict().items()}
        out["uninterrupted"] = {k: _rel(got[k], want[k]) for k in want}
        model = _fsdp_model(world)  # a fresh start from the world-4 checkpoint
        opt = Muon(muon_param_groups(model, lr=LR), ns_dtype=torch.float32)
        msd, osd = get_state_dict(model, opt)
        state = {"model": msd, "optim": osd}
        dcp.load(state, checkpoint_id=ckpt)
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        _train(model, opt, range(3, STEPS), rank, world)
    got = {k: v.full_tensor() for k, v in model.state_dict().items()}
    out["final"] = {k: _rel(got[k], want[k]) for k in want}
    out["kinds"] = {n: type(p).__name__ for n, p in model.named_parameters()}
    return out


def job(rank: int, world: int, ckpt: str) -> dict:
    return {"placements": _placements_check(rank, world), "fsdp": _fsdp_check(rank, world, ckpt)}


@pytest.fixture(scope="module")
def jobs():
    with tempfile.TemporaryDirectory() as ckpt:
        return {w: ok_results(spawn_job(job, w, ckpt, timeout=240)) for w in WORLD_SIZES}


@pytest.mark.parametrize("world", WORLD_SIZES)
def test_placed_dtensors_equal_single_process_muon(jobs, world):
    for rank, report in enumerate(jobs[world]):
        errs = report["placements"]["params"]
        assert max(errs.values()) <= TOL, f"{world=} {rank=} {errs=}"
        assert set(errs) >= set(PLACED), errs
        rms = report["placements"]["rms"]
        assert max(rms.values()) <= TOL, f"{world=} {rank=} {rms=}"


def test_distributed_muon_refuses_dtensors_and_names_muon(jobs):
    assert "use Muon" in jobs[2][0]["placements"]["zero1"], jobs[2][0]["placements"]["zero1"]


def _split_units(world: int) -> list[tuple[int, int]]:
    """(elements, largest piece) of every matrix some group of ranks holds in pieces, per step."""

    def chunks(n, parts):
        step = -(-n // parts)
        return [max(0, min(step, n - i * step)) for i in range(parts)]

    units = []
    for name, (shape, code) in PLACED.items():
        adamw = len(shape) < 2 or name == "embed"
        if code in ("S0", "S1") and not adamw and not (len(shape) == 3 and code == "S0"):
            dim = int(code[1])
            count = shape[0] if len(shape) == 3 else 1
            numel = math.prod(shape) // count
            units += [(numel, max(chunks(shape[dim], world)) * numel // shape[dim])] * count
    if world % 2 == 0:  # two replica groups of world/2 ranks each split (19, 23) by rows
        units += [(19 * 23, max(chunks(19, world // 2)) * 23)] * 2
        # experts split over mesh dim 0 (3 per group), rows over mesh dim 1
        units += [(9 * 11, max(chunks(9, world // 2)) * 11)] * 6
    return units


@pytest.mark.parametrize("world", WORLD_SIZES)
def test_split_matrices_travel_to_one_owner(jobs, world):
    """Per step, each split matrix's pieces go to one owner and its update pieces come back: between
    2·(elements − largest piece) and 2·elements of fp32 cross ranks, and what is sent is received."""
    counts = [
        c
        for r in jobs[world]
        for kind, c in r["placements"]["bytes"].items()
        if kind.startswith("all_to_all")
    ]
    sent, received = sum(c["sent"] for c in counts), sum(c["received"] for c in counts)
    units = _split_units(world)
    low, high = 2 * 4 * sum(n - big for n, big in units), 2 * 4 * sum(n for n, _ in units)
    assert sent == received and low <= sent <= high, f"{world=} {sent=} {received=} {low=} {high=}"


@pytest.mark.parametrize("world", WORLD_SIZES)
def test_fully_sharded_model_equals_single_process_muon(jobs, world):
    for rank, report in enumerate(jobs[world]):
        fsdp = report["fsdp"]
        assert set(fsdp["kinds"].values()) == {"DTensor"}, fsdp["kinds"]
        assert max(fsdp["final"].values()) <= TOL, f"{world=} {rank=} {fsdp['final']=}"
        if "uninterrupted" in fsdp:
            assert max(fsdp["uninterrupted"].values()) <= TOL, f"{world=} {rank=} {fsdp['uninterrupted']=}"


@pytest.mark.parametrize("world", (2, 3))
def test_dcp_checkpoint_from_world_4_resumes_at_another_world_size(jobs, world):
    for rank, report in enumerate(jobs[world]):
        final = report["fsdp"]["final"]
        assert max(final.values()) <= TOL, f"{world=} {rank=} {final=}"
