"""Conversion to and from the checkpoint layout of transformers' `DeepseekV3ForCausalLM`.

Our names equal transformers' except the routed experts: we keep one 3-D tensor per projection,
`model.layers.{i}.mlp.experts.gate_proj` (E, I, D), where the checkpoint has one matrix per expert,
`model.layers.{i}.mlp.experts.{j}.gate_proj.weight` (I, D) (same for up_proj, and down_proj (D, I)).

`save_pretrained(model, dir)` writes size-limited safetensors shards, `model.safetensors.index.json` and a
DeepseekV3 `config.json`; `from_pretrained(dir)` reads that layout (ours, transformers' `save_pretrained`,
or the published Moonlight checkpoint; a single `model.safetensors` works too). Missing or unknown keys
raise a `KeyError` listing them. Only safetensors are read or written, never pickle.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import MoonlightConfig
from .moonlight import MoonlightForCausalLM

_EXPERT_3D = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_proj|up_proj|down_proj)$")
_EXPERT_HF = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_IGNORED = re.compile(r"(rotary_emb\.inv_freq$)")  # non-persistent buffers some old exports include

INDEX_NAME = "model.safetensors.index.json"


def to_hf_state_dict(model: MoonlightForCausalLM) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (checkpoint key, tensor) in transformers' layout; expert matrices are views (not copies)."""
    tied = model.config.tie_word_embeddings
    for name, t in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        m = _EXPERT_3D.match(name)
        if m:
            for j, w in enumerate(t.unbind(0)):
                yield f"{m.group(1)}.{j}.{m.group(2)}.weight", w
        else:
            yield name, t


def _target(model_state: dict[str, torch.Tensor], key: str, n_experts: int):
    """Where checkpoint `key` goes: (our name, expert index or None), or None if nowhere."""
    m = _EXPERT_HF.match(key)
    if m:
        name, j = f"{m.group(1)}.{m.group(3)}", int(m.group(2))
        return (name, j) if name in model_state and j < n_experts else None
    return (key, None) if key in model_state else None


def check_keys(model: MoonlightForCausalLM, shapes: dict[str, tuple[int, ...]]) -> None:
    """Raise KeyError listing missing, unknown and wrongly shaped checkpoint keys (`shapes`: key -> shape)."""
    state = model.state_dict()
    E = model.config.n_routed_experts
    expected = set(dict(to_hf_state_dict(model)))
    unknown, bad_shape = [], []
    for key, shape in shapes.items():
        tgt = _target(state, key, E)
        if tgt is None:
            if not _IGNORED.search(key):
                unknown.append(key)
            continue
        want = state[tgt[0]].shape if tgt[1] is None else state[tgt[0]].shape[1:]
        if tuple(shape) != tuple(want):
            bad_shape.append(f"{key}: checkpoint {tuple(shape)} vs model {tuple(want)}")
    missing = sorted(expected - set(shapes))
    if missing or unknown or bad_shape:
        raise KeyError(
            "checkpoint does not match the model config:\n"
            + (f"  missing keys ({len(missing)}): {missing}\n" if missing else "")
            + (f"  unknown keys ({len(unknown)}): {sorted(unknown)}\n" if unknown else "")
            + (f"  wrong shapes: {bad_shape}\n" if bad_shape else "")
        )


@torch.no_grad()
def copy_tensor_(model_state: dict[str, torch.Tensor], key: str, t: torch.Tensor, n_experts: int) -> None:
    """Copy one checkpoint tensor into the model (expert matrices into their slice of the 3-D tensor)."""
    tgt = _target(model_state, key, n_experts)
    if tgt is None:
        return
    name, j = tgt
    (model_state[name] if j is None else model_state[name][j]).copy_(t)


def from_hf_state_dict(model: MoonlightForCausalLM, hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint tensors -> our state dict for `model` (experts stacked). Raises KeyError on any mismatch."""
    check_keys(model, {k: tuple(v.shape) for k, v in hf.items()})
    E = model.config.n_routed_experts
    out = {
        k: torch.empty_like(v, device="cpu", dtype=_dtype_of(hf, k, v)) for k, v in model.state_dict().items()
    }
    for key, t in hf.items():
        copy_tensor_(out, key, t, E)
    if model.config.tie_word_embeddings:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def _dtype_of(hf: dict[str, torch.Tensor], name: str, ours: torch.Tensor) -> torch.dtype:
    t = hf.get(name)
    if t is None and _EXPERT_3D.match(name):
        prefix, proj = name.rsplit(".", 1)
        t = hf.get(f"{prefix}.0.{proj}.weight")
    return ours.dtype if t is None else t.dtype


def save_pretrained(
    model: MoonlightForCausalLM,
    save_dir: str | os.PathLike,
    max_shard_bytes: int = 2 * 1024**3,
    dtype: torch.dtype | None = None,
) -> list[str]:
    """Write `config.json`, safetensors shards of at most `max_shard_bytes` (a single larger tensor gets
    its own shard) and `model.safetensors.index.json`. Returns the shard file names."""
    os.makedirs(save_dir, exist_ok=True)
    items = [
        (
            k,
            t
            if dtype is None or not t.is_floating_point() or "e_score_correction_bias" in k
            else t.to(dtype),
        )
        for k, t in to_hf_state_dict(model)
    ]
    shards: list[list[tuple[str, torch.Tensor]]] = [[]]
    size = 0
    for k, t in items:
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((k, t))
        size += nbytes
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map, total = {}, 0
    for fname, shard in zip(names, shards):
        # clone: safetensors refuses tensors that share storage (expert slices of one 3-D tensor do)
        tensors = {k: t.detach().to("cpu").clone().contiguous() for k, t in shard}
        save_file(tensors, os.path.join(save_dir, fname), metadata={"format": "pt"})
        for k, t in tensors.items():
            weight_map[k] = fname
            total += t.numel() * t.element_size()
    with open(os.path.join(save_dir, INDEX_NAME), "w") as f:
        json.dump(
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2
        )
    hf_cfg = model.config.to_hf_config()
    if dtype is not None:
        hf_cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    with open(os.path.join(save_dir, "config.json"), "w") as f:
        json.dump(hf_cfg, f, indent=2, sort_keys=True)
    return names


def checkpoint_files(load_dir: str | os.PathLike) -> list[str]:
    """Safetensors files of a checkpoint directory (sharded with an index, or one model.safetensors)."""
    index = os.path.join(load_dir, INDEX_NAME)
    if os.path.exists(index):
        with open(index) as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    if os.path.exists(os.path.join(load_dir, "model.safetensors")):
        return ["model.safetensors"]
    raise FileNotFoundError(f"{load_dir}: neither {INDEX_NAME} nor model.safetensors found")


def from_pretrained(
    load_dir: str | os.PathLike, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> MoonlightForCausalLM:
    """Build a MoonlightForCausalLM from a DeepseekV3 checkpoint directory (config.json + safetensors).

    dtype: parameter dtype (default float32); the router bias stays float32. The model is built on the
    meta device, allocated once, and filled shard by shard (peak memory: the model plus one tensor).
    """
    with open(os.path.join(load_dir, "config.json")) as f:
        config = MoonlightConfig.from_hf_config(json.load(f))
    with torch.device("meta"):
        model = MoonlightForCausalLM(config)
    if dtype is not None:
        model.to(dtype)
    model.to_empty(device=device)
    model.tie_weights()
    for moe in model.moe_layers():  # keep the router bias in fp32 whatever the parameter dtype
        moe.gate.e_score_correction_bias = moe.gate.e_score_correction_bias.float()
        moe.reset_load()
    files = [os.path.join(load_dir, name) for name in checkpoint_files(load_dir)]
    shapes = {}
    for path in files:
        with safe_open(path, framework="pt") as f:  # not a dict: .keys() is needed
            shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})  # noqa: SIM118
    check_keys(model, shapes)
    state = model.state_dict(keep_vars=True)
    state = {k: v.data if isinstance(v, torch.nn.Parameter) else v for k, v in state.items()}
    for path in files:
        with safe_open(path, framework="pt") as f:
            for k in f.keys():  # noqa: SIM118
                copy_tensor_(state, k, f.get_tensor(k), config.n_routed_experts)
    model.model.rotary_emb.reset_parameters()
    return model
