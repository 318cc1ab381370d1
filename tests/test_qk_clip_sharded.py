"""QK-clip on an FSDP2-sharded Moonlight (gloo, CPU) equals QK-clip on the whole model in one process:
every rank records the max logits of its rows, the clip takes the max over ranks and scales the rows of
q_b_proj / kv_b_proj each rank holds (uneven chunks at world 3)."""

from __future__ import annotations

import copy

import pytest
import torch

from .dist_harness import ok_results, spawn_job

pytestmark = pytest.mark.distributed


def job(rank: int, world: int, ep: int) -> dict:
    from muonext.data.loader import shard_rows
    from muonext.models import MoonlightConfig, MoonlightForCausalLM
    from muonext.optim import QKClip
    from muonext.parallel import ParallelDims, build_mesh, full_state_dict, parallelize_moonlight

    torch.manual_seed(0)
    ref = MoonlightForCausalLM(MoonlightConfig.preset("debug")).train()
    with torch.no_grad():  # head 0 far above τ in every layer, head 1 under it
        for layer in ref.model.layers:
            w = layer.self_attn.q_b_proj.weight
            w.view(2, -1, w.shape[1]).mul_(torch.tensor([40.0, 0.2]).view(2, 1, 1))
    model = copy.deepcopy(ref)
    parallelize_moonlight(model, build_mesh(ParallelDims(1, world, ep), "cpu"))
    model.train()
    ids = torch.randint(0, 512, (2 * world, 16), generator=torch.Generator().manual_seed(1))

    sharded_clip, whole_clip = QKClip(model, threshold=0.5), QKClip(ref, threshold=0.5)
    model(shard_rows(ids, rank, world))
    ref(ids)
    n_sharded, n_whole = sharded_clip.step(), whole_clip.step()
    whole = ref.state_dict()
    errors = {
        n: float((t - whole[n]).abs().max() / whole[n].abs().max().clamp_min(1e-30))
        for n, t in full_state_dict(model).items()
    }
    return {
        "clipped": (n_sharded, n_whole),
        "errors": errors,
        "max_logits": {
            n: torch.equal(v, whole_clip.max_logits[n]) or float((v - whole_clip.max_logits[n]).abs().max())
            for n, v in sharded_clip.max_logits.items()
        },
    }


@pytest.mark.parametrize("world,ep", [(2, 2), (3, 1)])
def test_clip_on_a_sharded_model_equals_clip_on_the_whole_model(world, ep):
    for res in ok_results(spawn_job(job, world, ep, timeout=180)):
        n_sharded, n_whole = res["clipped"]
        assert n_sharded == n_whole == 2  # head 0 of both layers
        assert all(v is True or v < 1e-6 for v in res["max_logits"].values()), res["max_logits"]
        bad = {n: e for n, e in res["errors"].items() if e > 1e-6}
        assert not bad, bad
