"""The memory plan (`python -m muonext.train.plan`) against bytes measured on CPU: the activation
formula against the tensors autograd saves in a real forward (debug and tiny, fp32 and bf16, with and
without activation checkpointing), and the per-rank parameter, gradient and optimizer-state bytes
against a model sharded over 4 processes (dp_shard 4, ep 2) after one Muon step."""

from __future__ import annotations

import functools

import pytest
import torch

from muonext.models import MoonlightConfig, MoonlightForCausalLM
from muonext.parallel import ParallelDims
from muonext.train.plan import activation_bytes, main, measure_activation_bytes, plan_memory

from .dist_harness import ok_results, spawn_job

TOL = 0.10  # the bound; the formulas land within bytes of the measurement


def _model(preset: str, precision: str) -> MoonlightForCausalLM:
    torch.manual_seed(0)
    model = MoonlightForCausalLM(MoonlightConfig.preset(preset)).train()
    for moe in model.moe_layers():  # the plan's expert path (rows per expert, no padded batch)
        moe.experts.dispatch = "loop"
    return model.to(torch.bfloat16) if precision == "bf16" else model


@pytest.mark.parametrize("preset,batch,seq", [("debug", 2, 64), ("debug", 3, 40), ("tiny", 2, 128)])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_activation_formula_matches_what_autograd_saves(preset, batch, seq, precision, one_thread):
    model = _model(preset, precision)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    measured = measure_activation_bytes(model, ids)
    planned = activation_bytes(model.config, batch, seq, precision=precision, attention="math")
    assert abs(planned - measured) <= TOL * measured, f"{preset=} {precision=} {planned=} {measured=}"
    assert abs(planned - measured) <= 16, f"{preset=} {precision=} {planned=} {measured=}"  # in practice


@pytest.mark.parametrize("preset", ["debug", "tiny"])
def test_checkpointed_layers_keep_only_their_inputs(preset, one_thread):
    from torch.utils.checkpoint import checkpoint

    model = _model(preset, "fp32")
    for layer in model.model.layers:
        layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)
    ids = torch.randint(0, model.config.vocab_size, (2, 64))
    measured = measure_activation_bytes(model, ids)
    stored = activation_bytes(model.config, 2, 64, attention="math", checkpointing=True, recompute=False)
    peak = activation_bytes(model.config, 2, 64, attention="math", checkpointing=True)
    whole = activation_bytes(model.config, 2, 64, attention="math")
    assert abs(stored - measured) <= TOL * measured, f"{stored=} {measured=}"
    assert stored < peak < whole


def _measured_state_bytes(rank: int, world: int, preset: str) -> dict:
    from muonext.optim import Muon, muon_param_groups
    from muonext.parallel import build_mesh, parallelize_moonlight

    torch.manual_seed(0)
    model = MoonlightForCausalLM(MoonlightConfig.preset(preset))
    parallelize_moonlight(model, build_mesh(ParallelDims(1, 4, 2), "cpu"))
    opt = Muon(muon_param_groups(model), lr=1e-3)
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    model(ids, labels=ids).loss.backward()
    opt.step()

    def storage_bytes(tensors) -> int:
        seen = {}
        for t in tensors:
            t = t.to_local() if hasattr(t, "to_local") else t
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return sum(seen.values())

    return {
        "parameters": storage_bytes(model.parameters()),
        "gradients": storage_bytes(p.grad for p in model.parameters()),
        "optimizer": storage_bytes(v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)),
    }


def state_job(rank: int, world: int) -> dict:
    return {preset: _measured_state_bytes(rank, world, preset) for preset in ("debug", "tiny")}


@pytest.mark.distributed
def test_per_rank_state_matches_a_sharded_model():
    reports = ok_results(spawn_job(state_job, 4, timeout=240))
    for preset in ("debug", "tiny"):
        plan = plan_memory(MoonlightConfig.preset(preset), ParallelDims(1, 4, 2), 16, 1, precision="fp32")
        for rank, report in enumerate(reports):
            for kind in ("parameters", "gradients", "optimizer"):
                planned, measured = getattr(plan, kind), report[preset][kind]
                # the plan sizes every rank by the largest shard; trailing ranks may hold less
                assert measured <= planned <= (1 + TOL) * measured, (
                    f"{preset=} {rank=} {kind=} {planned=} {measured=}"
                )


def test_cli_prints_the_plan_and_whether_it_fits(capsys):
    plan = main(
        [
            "--preset",
            "moonlight-16b-a3b",
            "--dp-shard",
            "64",
            "--ep",
            "8",
            "--seq-len",
            "8192",
            "--micro-batch",
            "1",
            "--device-gb",
            "80",
        ]
    )
    out = capsys.readouterr().out
    assert "15.96 B parameters" in out and "64 ranks" in out and "fits in 80 GiB" in out, out
    # 16 B parameters over 64 ranks: about 1 GiB of fp32 weights each
    assert 0.8 < plan.parameters / 2**30 < 1.1, plan
    main(["--preset", "moonlight-16b-a3b", "--dp-shard", "4", "--seq-len", "8192", "--device-gb", "80"])
    assert "does NOT fit" in capsys.readouterr().out
