"""Nested state (optimizer state dicts, RNG states) as safetensors + JSON — no pickle.

`flatten(obj)` → (json-able tree, {key: tensor}): tensors become {"__tensor__": key}; dicts whose keys are
not all plain strings (optimizer state is keyed by int) become {"__dict__": [[key, value], ...]}; tuples
{"__tuple__": [...]}; torch.dtype values {"__dtype__": "float32"}. `unflatten` inverts it exactly.
"""

from __future__ import annotations

from typing import Any

import torch

_MARKERS = ("__tensor__", "__dict__", "__tuple__", "__dtype__")


def flatten(obj: Any, prefix: str = "t") -> tuple[Any, dict[str, torch.Tensor]]:
    tensors: dict[str, torch.Tensor] = {}
    tree = _flatten(obj, tensors, prefix)
    return tree, tensors


def _flatten(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"{path}#{len(tensors)}"
        # clone: safetensors refuses tensors that share storage
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).removeprefix("torch.")}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _MARKERS for k in obj):
            return {k: _flatten(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        for k in obj:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"flatten: dict key {k!r} at {path} must be a str or an int")
        return {"__dict__": [[k, _flatten(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"flatten: cannot store {type(obj).__name__} at {path} without pickle")


def unflatten(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, list):
        return [unflatten(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__tensor__" in tree:
        key = tree["__tensor__"]
        if key not in tensors:
            raise KeyError(f"unflatten: tensor {key!r} is missing from the tensor file")
        return tensors[key]
    if "__dtype__" in tree:
        return getattr(torch, tree["__dtype__"])
    if "__tuple__" in tree:
        return tuple(unflatten(v, tensors) for v in tree["__tuple__"])
    if "__dict__" in tree:
        return {k: unflatten(v, tensors) for k, v in tree["__dict__"]}
    return {k: unflatten(v, tensors) for k, v in tree.items()}
