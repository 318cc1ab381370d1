"""The Moonlight model sharded by `parallelize_moonlight` against the same model in one process
(gloo, CPU): FSDP2 per layer, expert parallelism, HSDP replicas, activation checkpointing.

Each job builds the debug model (4 experts, one dense and one MoE layer) on every rank from one seed,
shards it, runs forward and backward on its rows of a batch with the trainer's loss scaling (the sum
over ranks is the global token mean) and compares logits, gradients and expert loads with the
single-process model run on the same rows: fp32 throughout, 1e-5 relative.
"""

from __future__ import annotations

import copy

import pytest
import torch

from .dist_harness import ok_results, spawn_job

pytestmark = pytest.mark.distributed

TOL = 1e-5
# (world, dp_replicate, dp_shard, ep, activation checkpointing)
LAYOUTS = [(4, 1, 4, 2, False), (4, 2, 2, 2, True), (3, 1, 3, 1, False), (2, 1, 2, 2, True)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _loss(out, ids_local, n_local: int, n_global: int, rows_global: int):
    loss = out.lm_loss * (n_local / n_global)
    return loss + out.aux_loss * (ids_local.shape[0] / rows_global)


def job(rank: int, world: int, dp_replicate: int, dp_shard: int, ep: int, ac: bool) -> dict:
    from torch.distributed.tensor import DTensor

    from muonext.data.loader import shard_rows
    from muonext.models import MoonlightConfig, MoonlightForCausalLM
    from muonext.parallel import ParallelDims, build_mesh, materialize, parallelize_moonlight

    torch.manual_seed(0)
    ref = MoonlightForCausalLM(MoonlightConfig.preset("debug", aux_loss_alpha=0.01))
    model = copy.deepcopy(ref)
    mesh = build_mesh(ParallelDims(dp_replicate, dp_shard, ep), "cpu")
    parallelize_moonlight(model, mesh, activation_checkpointing=ac)
    ref.train()
    model.train()

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 512, (2 * world, 24), generator=g)
    n_global, rows = ids.shape[0] * (ids.shape[1] - 1), ids.shape[0]
    mine = shard_rows(ids, rank, world)
    out = model(mine, labels=mine)
    _loss(out, mine, mine.shape[0] * (mine.shape[1] - 1), n_global, rows).backward()
    for r in range(world):  # the reference sums every rank's share, as the sharded reduction does
        theirs = shard_rows(ids, r, world)
        ref_out = ref(theirs, labels=theirs)
        _loss(ref_out, theirs, theirs.shape[0] * (theirs.shape[1] - 1), n_global, rows).backward()
        if r == rank:
            logits = _rel(out.logits.detach(), ref_out.logits.detach())

    grads = dict(ref.named_parameters())
    errors = {n: _rel(p.grad.full_tensor(), grads[n].grad) for n, p in model.named_parameters()}

    with torch.device("meta"):  # the large-model path: shard first, then draw each parameter whole
        lazy = MoonlightForCausalLM(MoonlightConfig.preset("debug", aux_loss_alpha=0.01))
    parallelize_moonlight(lazy, mesh)
    torch.manual_seed(0)
    materialize(lazy, "cpu")
    fresh = MoonlightForCausalLM(MoonlightConfig.preset("debug", aux_loss_alpha=0.01))  # seed 0's init again
    torch.manual_seed(0)
    fresh.reset_parameters()
    same_init = all(torch.equal(p.full_tensor(), fresh.state_dict()[n]) for n, p in lazy.named_parameters())
    loads = model.expert_loads(accumulated=True)
    torch.distributed.all_reduce(loads)
    experts = model.model.layers[1].mlp.experts.gate_proj
    return {
        "logits": logits,
        "grads": errors,
        "loads": _rel(loads, ref.expert_loads(accumulated=True)),
        "kinds": {type(p).__name__ for p in model.parameters()},
        "local_experts": experts.to_local().shape[0] if isinstance(experts, DTensor) else None,
        "names": sorted(n for n, _ in model.named_parameters()) == sorted(grads),
        "same_init": same_init,
    }


@pytest.fixture(
    scope="module", params=LAYOUTS, ids=lambda lay: "world{}-rep{}-shard{}-ep{}-ac{}".format(*lay)
)
def layout_run(request):
    world, rep, shard, ep, ac = request.param
    return request.param, ok_results(spawn_job(job, world, rep, shard, ep, ac, timeout=240))


def test_forward_and_backward_equal_one_process(layout_run):
    (world, rep, shard, ep, ac), reports = layout_run
    for rank, r in enumerate(reports):
        assert r["names"], "parameter names changed"
        assert r["kinds"] == {"DTensor"}, r["kinds"]
        assert r["logits"] <= TOL, f"{world=} {rank=} {r['logits']=}"
        worst = max(r["grads"], key=r["grads"].get)
        assert r["grads"][worst] <= TOL, (
            f"{world=} {rep=} {shard=} {ep=} {ac=} {rank=} {worst}: {r['grads'][worst]}"
        )
        assert r["loads"] <= TOL, f"{world=} {rank=} {r['loads']=}"  # recomputation counts no token twice


def test_a_model_sharded_on_meta_materialises_to_the_whole_models_init(layout_run):
    assert all(r["same_init"] for r in layout_run[1]), layout_run[0]


def test_experts_are_split_over_the_ep_ranks(layout_run):
    (world, _, shard, ep, _), reports = layout_run
    for r in reports:
        # FSDP then shards a rank's experts over dp_shard_mod_ep: at most ceil(4 / ep / (shard / ep)) here
        expected = -(-4 // ep // (shard // ep))
        assert r["local_experts"] is not None and r["local_experts"] <= expected, (
            world,
            ep,
            r["local_experts"],
        )
