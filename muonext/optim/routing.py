"""Which parameters Muon orthogonalises and which take the AdamW path (DESIGN.md §2).

Matrices (and 3-D expert stacks) go to Muon; embeddings, the output head, norms, biases and every
1-D tensor go to AdamW with the same lr and weight decay — the point of matching update RMS.
"""

from __future__ import annotations

from torch import Tensor, nn

# Name fragments of 2-D parameters that are lookup tables or the output head, not hidden matrices.
NON_MUON_NAME_PARTS = ("embed", "lm_head", "wte", "wpe", "output_head", "classifier")


def is_muon_param(name: str | None, param: Tensor) -> bool:
    """True for hidden matrices: ≥2-D and not an embedding or output head by name."""
    if param.dim() < 2:
        return False
    lowered = (name or "").lower()
    return not any(part in lowered for part in NON_MUON_NAME_PARTS)


def muon_param_groups(model: nn.Module, **group_options) -> list[dict]:
    """Two param groups for `Muon`: hidden matrices (use_muon=True) and the rest (use_muon=False).

    Embedding modules' weights go to AdamW whatever their names; `group_options` (lr, weight_decay, …)
    are copied into both groups. Parameters with requires_grad=False are left out.
    """
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
    muon, other = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        use_muon = id(p) not in embedding_params and is_muon_param(name, p)
        (muon if use_muon else other).append((name, p))
    groups = []
    for use_muon, named in ((True, muon), (False, other)):
        if named:
            groups.append({
                "params": [p for _, p in named],
                "param_names": [n for n, _ in named],
                "use_muon": use_muon,
                **group_options,
            })
    return groups
