"""Recording max logits in transformers' attention modules without changing their code.

transformers' attention modules call `ALL_ATTENTION_FUNCTIONS[config._attn_implementation]` with the
rotated query and key, the mask and the softmax scale (or their own `eager_attention_forward`). We
register one more implementation that records into the module's `logit_recorder` and then calls the one
the model used, and give it that implementation's masks, so the model computes exactly what it did.
"""

from __future__ import annotations

import sys

from torch import nn

_PREFIX = "muonext_max_logits:"


def _wrapped_call(inner: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        recorder = getattr(module, "logit_recorder", None)
        if recorder is not None and module.training:
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            mask = attention_mask[..., : key.shape[-2]] if attention_mask is not None else None
            causal = mask is None and query.shape[2] > 1 and getattr(module, "is_causal", True)
            recorder.update(query, key, scale, mask, causal)
        if inner == "eager":  # each modeling file has its own
            fn = sys.modules[type(module).__module__].eager_attention_forward
        else:
            fn = ALL_ATTENTION_FUNCTIONS[inner]
        return fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)

    return attention


def install(model: nn.Module) -> str:
    """Route `model`'s attention through the recorder; returns the implementation it used before."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    inner = model.config._attn_implementation or "eager"
    if inner.startswith(_PREFIX):
        return inner[len(_PREFIX) :]
    name = _PREFIX + inner
    ALL_ATTENTION_FUNCTIONS.register(name, _wrapped_call(inner))
    if inner in ALL_MASK_ATTENTION_FUNCTIONS:
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])
    model.config._attn_implementation = name
    return inner


def uninstall(model: nn.Module, inner: str) -> None:
    model.config._attn_implementation = inner


def is_transformers_attention(module: nn.Module) -> bool:
    """A module that takes its attention function from transformers' interface."""
    config = getattr(module, "config", None)
    return (
        config is not None
        and hasattr(config, "_attn_implementation")
        and (hasattr(module, "kv_b_proj") or (hasattr(module, "q_proj") and hasattr(module, "k_proj")))
    )
