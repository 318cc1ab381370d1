"""QK-clip (MuonClip, Kimi K2): keep every attention head's max pre-softmax logit at most τ.

    opt = Muon(...)
    clip = QKClip(model, threshold=100.0)   # turns on max-logit recording in every attention module
    for batch in data:
        model(batch).loss.backward(); opt.step(); opt.zero_grad()
        n_clipped = clip.step()             # rescales W_q / W_k of the heads whose max logit exceeded τ

`step()` takes the per-head max logits S_max^h recorded by the training forwards since the last step
(reduced with MAX over all ranks when distributed, so every rank applies the same scales to its shards)
and, for each head with S_max^h > τ, scales its query and key weights so that its logits scale by
γ = τ / S_max^h (the split between q and k per attention kind: `qk_heads.py`). Heads under τ are left
exactly as they are. `threshold=math.inf` records and reports without clipping.

Attention modules found: Moonlight's `MLAttention`; transformers' DeepSeek-V3 (MLA) attention and
q_proj/k_proj attention (Llama, Mistral, Qwen2, ... — anything calling transformers' attention interface),
recorded through that interface (`qk_record_hf.py`). FSDP2-sharded (DTensor) weights are scaled where
they lie.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..models.attention import MLAttention
from ..models.max_logits import MaxLogitRecorder
from . import qk_record_hf
from .dtensor_params import local
from .qk_heads import MLAHeads, PlainHeads

__all__ = ["QKClip"]


class QKClip:
    def __init__(self, model: nn.Module, threshold: float = 100.0, process_group=None) -> None:
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not threshold > 0:
            raise ValueError(
                f"QKClip: threshold must be a number > 0 (math.inf: record only), got {threshold!r}"
            )
        self.threshold = float(threshold)
        self.group = process_group
        self.layers: list[tuple[str, nn.Module, MLAHeads | PlainHeads]] = []
        for name, m in model.named_modules():
            if isinstance(m, MLAttention) or (
                qk_record_hf.is_transformers_attention(m) and hasattr(m, "kv_b_proj")
            ):
                self.layers.append((name, m, MLAHeads.of(m)))
            elif qk_record_hf.is_transformers_attention(m):
                self.layers.append((name, m, PlainHeads.of(m, name)))
        if not self.layers:
            raise ValueError(
                f"QKClip: found no attention module in {type(model).__name__} (supported: muonext's "
                "MLAttention, transformers' attention modules with q_proj/k_proj or kv_b_proj)"
            )
        self._hf_models = []
        if any(not isinstance(m, MLAttention) for _, m, _ in self.layers):
            self._hf_models = [(m, qk_record_hf.install(m)) for m in _hf_roots(model)]
        for _, m, _ in self.layers:
            m.logit_recorder = MaxLogitRecorder()
        self.max_logits: dict[str, Tensor] = {}  # per layer, per head: of the last step (over all ranks)
        self.clipped: dict[str, int] = {}  # per layer: heads clipped at the last step
        self.removed = False

    @torch.no_grad()
    def step(self) -> int:
        """Rescale the heads whose max logit since the last step exceeded τ; returns how many were clipped.

        Distributed: every rank must call it (one all_reduce). Layers with no training forward since the
        last step are skipped."""
        if self.removed:
            raise RuntimeError("QKClip.step() after remove(): the recording is off")
        taken = [m.logit_recorder.take() for _, m, _ in self.layers]
        flat = torch.cat(
            [
                t if t is not None else torch.full((h.num_heads,), -math.inf, device=_device(m))
                for t, (_, m, h) in zip(taken, self.layers)
            ]
        )
        if dist.is_available() and dist.is_initialized() and dist.get_world_size(self.group) > 1:
            dist.all_reduce(flat, op=dist.ReduceOp.MAX, group=self.group)
        self.max_logits, self.clipped, total = {}, {}, 0
        for (name, module, heads), s_max in zip(
            self.layers, flat.split([h.num_heads for _, _, h in self.layers])
        ):
            if not torch.isfinite(s_max).any():
                continue
            self.max_logits[name] = s_max.cpu()
            over = s_max > self.threshold
            self.clipped[name] = n = int(over.sum())
            if n:
                heads.rescale(module, torch.where(over, self.threshold / s_max, torch.ones_like(s_max)))
                total += n
        return total

    def layer_max(self) -> dict[str, float]:
        """Max over heads of each layer's max logit at the last step."""
        return {name: float(v.max()) for name, v in self.max_logits.items()}

    def remove(self) -> None:
        """Stop recording (and give transformers models their attention implementation back)."""
        for _, m, _ in self.layers:
            m.logit_recorder = None
        for model, inner in self._hf_models:
            qk_record_hf.uninstall(model, inner)
        self._hf_models, self.removed = [], True


def _device(module: nn.Module) -> torch.device:
    return local(next(module.parameters())).device


def _hf_roots(model: nn.Module) -> list[nn.Module]:
    """The outermost modules holding a transformers config (whose attention implementation we route)."""
    roots, seen = [], set()
    for m in model.modules():
        config = getattr(m, "config", None)
        if config is not None and hasattr(config, "_attn_implementation") and id(config) not in seen:
            seen.add(id(config))
            roots.append(m)
    return roots
