"""Sharded, versioned checkpoints of DistributedMuon, resharding, and conversion to and from `Muon`.

A shard (what `DistributedMuon.state_dict()` returns on one rank) is a torch optimizer state dict whose
tensors are this rank's pieces (1-D), plus an entry

    "muonext_distributed": {"format": 1, "world_size": N, "rank": r, "layout": ShardLayout.describe(),
                            "pieces": {param_index: [param_offset, length]}, "skipped_steps": k}

Protocol (any world size → any world size): every rank saves its shard to its own file; to resume at
the same world size and layout each rank loads its own file; at another world size (or bucket size)
each rank loads *all* the old files and passes the list to `load_state_dict`, which merges them into a
full single-process `Muon` state dict (`to_muon_state_dict`) and keeps its own pieces. A `Muon` state
dict loads into `DistributedMuon` directly, and `to_muon_state_dict(shards)` loads into `Muon`.
"""

from __future__ import annotations

import copy
import math

import torch

from .shard_layout import ShardLayout

__all__ = ["FORMAT", "KEY", "is_shard", "local_state_from_muon", "shard_state_dict", "to_muon_state_dict"]

FORMAT = 1
KEY = "muonext_distributed"
SUPPORTED_FORMATS = (1,)


def is_shard(state_dict) -> bool:
    return isinstance(state_dict, dict) and KEY in state_dict


def shard_state_dict(torch_state_dict: dict, layout: ShardLayout, rank: int, skipped_steps: int) -> dict:
    """Tags the torch-format state dict of this rank's pieces with the format, the layout and the pieces."""
    pieces = {pc.param: [pc.param_offset, pc.length] for pc in layout.pieces(rank)}
    sd = dict(torch_state_dict)
    sd[KEY] = {
        "format": FORMAT,
        "world_size": layout.world_size,
        "rank": rank,
        "layout": layout.describe(),
        "pieces": {i: pieces[i] for i in sd["state"]},
        "skipped_steps": int(skipped_steps),
    }
    return sd


def _check_format(meta: dict) -> None:
    if meta.get("format") not in SUPPORTED_FORMATS:
        raise ValueError(f"DistributedMuon checkpoint format {meta.get('format')!r} is not supported "
                         f"(this version reads {SUPPORTED_FORMATS})")


def to_muon_state_dict(shards: list[dict]) -> dict:
    """Merges the shards of all ranks (any order) into a single-process `Muon` state dict."""
    if not shards:
        raise ValueError("to_muon_state_dict: no shards given")
    metas = []
    for s in shards:
        if not is_shard(s):
            raise ValueError(f"to_muon_state_dict: expected DistributedMuon shards (with a {KEY!r} entry)")
        _check_format(s[KEY])
        metas.append(s[KEY])
    n = metas[0]["world_size"]
    ranks = sorted(m["rank"] for m in metas)
    if ranks != list(range(n)):
        raise ValueError(f"to_muon_state_dict: need the shards of all {n} ranks exactly once, got ranks {ranks}")
    params = metas[0]["layout"]["params"]
    if any(m["layout"]["params"] != params for m in metas):
        raise ValueError("to_muon_state_dict: the shards come from different parameter lists")

    full: dict[int, dict] = {}
    covered: dict[int, int] = {}
    for s, meta in zip(shards, metas):
        for idx, entry in s["state"].items():
            offset, length = meta["pieces"][idx]
            numel = math.prod(params[idx]["shape"])
            out = full.setdefault(idx, {})
            covered[idx] = covered.get(idx, 0) + length
            for key, value in entry.items():
                if key == "step":
                    out[key] = value.clone() if torch.is_tensor(value) else value
                    continue
                if key not in out:
                    out[key] = torch.zeros(numel, dtype=value.dtype, device=value.device)
                out[key][offset:offset + length] = value
    for idx, out in full.items():
        numel = math.prod(params[idx]["shape"])
        if covered[idx] != numel:
            raise ValueError(f"to_muon_state_dict: the shards hold {covered[idx]} of the {numel} elements of "
                             f"the state of {params[idx]['name']}")
        for key, value in out.items():
            if key != "step":
                out[key] = value.view(params[idx]["shape"])
    return {
        "state": full,
        "param_groups": copy.deepcopy(shards[0]["param_groups"]),
        "muonext": {"format": 1, "skipped_steps": metas[0]["skipped_steps"]},
    }


def _check_names(param_groups: list[dict], layout: ShardLayout) -> None:
    """Refuses state saved for other parameters in the same places: equal shapes alone would let a
    reordered model load another parameter's momentum silently. Unnamed parameters are named by place
    (`param_groups[g].params[i]`), as `Muon` names them."""
    saved = []
    for gi, g in enumerate(param_groups):
        names = g.get("param_names")
        by_place = [f"param_groups[{gi}].params[{i}]" for i in range(len(g["params"]))]
        saved += names if names is not None else by_place
    mine = [p.name for p in layout.params]
    if saved == mine:
        return
    diff = next((i for i, (a, b) in enumerate(zip(saved, mine)) if a != b), min(len(saved), len(mine)))
    raise ValueError(
        f"the checkpoint's optimizer state is for other parameters: parameter {diff} is "
        f"{saved[diff] if diff < len(saved) else '(none)'!r} in the checkpoint and "
        f"{mine[diff] if diff < len(mine) else '(none)'!r} here ({len(saved)} and {len(mine)} parameters)")


def local_state_from_muon(muon_state_dict: dict, layout: ShardLayout, rank: int) -> dict[int, dict]:
    """This rank's pieces of a full `Muon` state dict: {param_index: {key: 1-D piece or step}}."""
    state = muon_state_dict["state"]
    if len(state) and max(state) >= len(layout.params):
        raise ValueError(f"the checkpoint has state for parameter {max(state)}, the optimizer has "
                         f"{len(layout.params)} parameters")
    _check_names(muon_state_dict["param_groups"], layout)
    local: dict[int, dict] = {}
    for pc in layout.pieces(rank):
        entry = state.get(pc.param)
        if entry is None:
            continue
        info = layout.params[pc.param]
        piece = {}
        for key, value in entry.items():
            if key == "step":
                piece[key] = value.clone() if torch.is_tensor(value) else value
                continue
            if tuple(value.shape) != tuple(info.shape):
                raise ValueError(f"checkpoint state {key!r} of {info.name} has shape {list(value.shape)}, the "
                                 f"parameter has {list(info.shape)}")
            piece[key] = value.reshape(-1)[pc.param_offset:pc.param_offset + pc.length].clone()
        local[pc.param] = piece
    return local
