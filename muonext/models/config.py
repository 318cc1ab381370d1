"""MoonlightConfig: the model's hyper-parameters, with the field names of transformers' `DeepseekV3Config`.

`MoonlightConfig.preset(name)` gives the published Moonlight-16B-A3B config and two small ones
(`tiny`: a CPU demo that trains in minutes; `debug`: seconds). `from_hf_config` / `to_hf_config`
convert to and from a `config.json` dict (`model_type: deepseek_v3`), so published checkpoints load and
our exports open in transformers.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

# Keys of a DeepseekV3 config.json that carry no model hyper-parameter we need (or only a value we check).
_IGNORED_HF_KEYS = {
    "architectures",
    "auto_map",
    "model_type",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "_name_or_path",
    "ep_size",
    "pretraining_tp",
    "use_cache",
    "quantization_config",
    "name_or_path",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "head_dim",
    "qk_head_dim",
    "_attn_implementation_autoset",
    "attn_implementation",
}


@dataclass
class MoonlightConfig:
    """DeepSeek-V3 architecture (MLA attention + fine-grained MoE), as used by Moonlight.

    Field names follow transformers' `DeepseekV3Config`; extra fields (`scoring_func`, `topk_method`,
    `aux_loss_alpha`, `seq_aux`, `moe_layer_freq`, `num_nextn_predict_layers`) follow the published
    Moonlight/DeepSeek-V3 config.json.
    """

    vocab_size: int = 163840
    hidden_size: int = 2048
    intermediate_size: int = 11264  # dense MLP of the first `first_k_dense_replace` layers
    moe_intermediate_size: int = 1408  # per routed expert (shared experts: n_shared_experts times this)
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    num_key_value_heads: int = 16  # MLA: must equal num_attention_heads
    n_shared_experts: int = 2
    n_routed_experts: int = 64
    num_experts_per_tok: int = 6
    routed_scaling_factor: float = 2.446
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    first_k_dense_replace: int = 1
    scoring_func: str = "sigmoid"
    topk_method: str = "noaux_tc"
    aux_loss_alpha: float = 0.0  # sequence-wise balance loss weight (DeepSeek-V3 eq. 17-20); 0 = off
    seq_aux: bool = True
    moe_layer_freq: int = 1
    num_nextn_predict_layers: int = 0
    kv_lora_rank: int = 512
    q_lora_rank: int | None = None
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    hidden_act: str = "silu"
    max_position_embeddings: int = 8192
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-5
    rope_theta: float = 50000.0
    rope_scaling: dict[str, Any] | None = None
    rope_interleave: bool = True
    attention_bias: bool = False
    attention_dropout: float = 0.0
    tie_word_embeddings: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = 163584
    eos_token_id: int | list[int] | None = 163586
    extra: dict[str, Any] = field(default_factory=dict)  # other config.json keys, kept for the round trip

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"MoonlightConfig.{name} must be a positive int, got {v!r}")

        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "moe_intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "n_routed_experts",
            "num_experts_per_tok",
            "kv_lora_rank",
            "qk_nope_head_dim",
            "qk_rope_head_dim",
            "v_head_dim",
            "n_group",
            "topk_group",
            "max_position_embeddings",
            "moe_layer_freq",
        ):
            positive(name)
        if self.q_lora_rank is not None:
            positive("q_lora_rank")
        if not isinstance(self.n_shared_experts, int) or self.n_shared_experts < 0:
            raise ValueError(
                f"MoonlightConfig.n_shared_experts must be an int >= 0, got {self.n_shared_experts!r}"
            )
        if not 0 <= self.first_k_dense_replace <= self.num_hidden_layers:
            raise ValueError(
                f"MoonlightConfig.first_k_dense_replace must be in [0, num_hidden_layers="
                f"{self.num_hidden_layers}], got {self.first_k_dense_replace}"
            )
        if self.num_key_value_heads != self.num_attention_heads:
            raise ValueError(
                f"MoonlightConfig.num_key_value_heads must equal num_attention_heads ({self.num_attention_heads}) "
                f"for MLA, got {self.num_key_value_heads}"
            )
        if self.num_experts_per_tok > self.n_routed_experts:
            raise ValueError(
                f"MoonlightConfig.num_experts_per_tok ({self.num_experts_per_tok}) must be <= n_routed_experts "
                f"({self.n_routed_experts})"
            )
        if self.n_routed_experts % self.n_group:
            raise ValueError(
                f"MoonlightConfig.n_group ({self.n_group}) must divide n_routed_experts ({self.n_routed_experts})"
            )
        if self.topk_group > self.n_group:
            raise ValueError(
                f"MoonlightConfig.topk_group ({self.topk_group}) must be <= n_group ({self.n_group})"
            )
        if self.topk_group * (self.n_routed_experts // self.n_group) < self.num_experts_per_tok:
            raise ValueError(
                f"MoonlightConfig.topk_group ({self.topk_group}) groups of "
                f"{self.n_routed_experts // self.n_group} experts cannot hold num_experts_per_tok="
                f"{self.num_experts_per_tok} experts"
            )
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"MoonlightConfig.qk_rope_head_dim must be even, got {self.qk_rope_head_dim}")
        if self.scoring_func != "sigmoid":
            raise ValueError(f"MoonlightConfig.scoring_func must be 'sigmoid', got {self.scoring_func!r}")
        if self.topk_method != "noaux_tc":
            raise ValueError(f"MoonlightConfig.topk_method must be 'noaux_tc', got {self.topk_method!r}")
        if self.moe_layer_freq != 1:
            raise ValueError(f"MoonlightConfig.moe_layer_freq must be 1, got {self.moe_layer_freq}")
        if self.num_nextn_predict_layers != 0:
            raise ValueError(
                f"MoonlightConfig.num_nextn_predict_layers (multi-token prediction) is not supported, got "
                f"{self.num_nextn_predict_layers}"
            )
        if self.hidden_act != "silu":
            raise ValueError(f"MoonlightConfig.hidden_act must be 'silu', got {self.hidden_act!r}")
        if not (self.routed_scaling_factor > 0 and math.isfinite(self.routed_scaling_factor)):
            raise ValueError(
                f"MoonlightConfig.routed_scaling_factor must be a positive number, got {self.routed_scaling_factor!r}"
            )
        if self.aux_loss_alpha < 0:
            raise ValueError(f"MoonlightConfig.aux_loss_alpha must be >= 0, got {self.aux_loss_alpha}")
        if self.rms_norm_eps <= 0:
            raise ValueError(f"MoonlightConfig.rms_norm_eps must be > 0, got {self.rms_norm_eps}")
        if self.rope_theta <= 0:
            raise ValueError(f"MoonlightConfig.rope_theta must be > 0, got {self.rope_theta}")
        if self.rope_scaling is not None:
            rs = dict(self.rope_scaling)
            kind = rs.get("rope_type", rs.get("type"))
            if kind != "yarn":
                raise ValueError(
                    f"MoonlightConfig.rope_scaling: only rope_type 'yarn' is supported, got {kind!r}"
                )
            if not float(rs.get("factor", 0)) >= 1.0:
                raise ValueError(
                    f"MoonlightConfig.rope_scaling['factor'] must be >= 1, got {rs.get('factor')!r}"
                )
            rs["rope_type"] = "yarn"
            for k in ("factor", "beta_fast", "beta_slow"):
                if k in rs and rs[k] is not None:
                    rs[k] = float(rs[k])
            self.rope_scaling = rs

    # ------------------------------------------------------------------ derived
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def is_moe_layer(self, layer_idx: int) -> bool:
        return layer_idx >= self.first_k_dense_replace

    def replace(self, **changes: Any) -> MoonlightConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ presets
    @staticmethod
    def presets() -> list[str]:
        """The names `preset()` accepts."""
        return sorted(_PRESETS)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> MoonlightConfig:
        """`moonlight-16b-a3b` (the published config), `tiny` (CPU demo, minutes), `debug` (seconds)."""
        if name not in _PRESETS:
            raise ValueError(f"unknown MoonlightConfig preset {name!r}; choose one of {sorted(_PRESETS)}")
        return cls(**{**_PRESETS[name], **overrides})

    # ------------------------------------------------------------------ transformers config.json
    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> MoonlightConfig:
        """From a DeepseekV3 `config.json` dict (transformers' or the published Moonlight one).

        Keys that are not fields (e.g. transformers' generic `PretrainedConfig` attributes) are kept in
        `extra` and written back by `to_hf_config`; values we cannot honour fail validation.
        """
        hf = dict(hf)
        mt = hf.get("model_type", "deepseek_v3")
        if mt != "deepseek_v3":
            raise ValueError(f"config.json model_type must be 'deepseek_v3', got {mt!r}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: hf.pop(k) for k in list(hf) if k in names}
        for k in _IGNORED_HF_KEYS:
            hf.pop(k, None)
        return cls(**kwargs, extra=hf)  # other keys (generic PretrainedConfig ones) only ride along

    def to_hf_config(self) -> dict[str, Any]:
        """A DeepseekV3 `config.json` dict that transformers' `DeepseekV3Config` reads."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d.update(self.extra)
        d.update(model_type="deepseek_v3", architectures=["DeepseekV3ForCausalLM"], torch_dtype="float32")
        return d


_PRESETS: dict[str, dict[str, Any]] = {
    # The published Moonlight-16B-A3B config.json (values as released by Moonshot AI).
    "moonlight-16b-a3b": {
        "vocab_size": 163840,
        "hidden_size": 2048,
        "intermediate_size": 11264,
        "moe_intermediate_size": 1408,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "n_shared_experts": 2,
        "n_routed_experts": 64,
        "num_experts_per_tok": 6,
        "routed_scaling_factor": 2.446,
        "n_group": 1,
        "topk_group": 1,
        "norm_topk_prob": True,
        "first_k_dense_replace": 1,
        "kv_lora_rank": 512,
        "q_lora_rank": None,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "rope_theta": 50000.0,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 8192,
        "aux_loss_alpha": 0.001,
        "bos_token_id": 163584,
        "eos_token_id": 163586,
    },
    # 7.9M parameters (3.7M non-embedding, 2.0M activated): trains visibly on 2 CPU cores in minutes.
    "tiny": {
        "vocab_size": 8192,
        "hidden_size": 256,
        "intermediate_size": 768,
        "moe_intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "n_shared_experts": 1,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "routed_scaling_factor": 2.446,
        "n_group": 1,
        "topk_group": 1,
        "first_k_dense_replace": 1,
        "kv_lora_rank": 64,
        "q_lora_rank": None,
        "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 16,
        "v_head_dim": 32,
        "rope_theta": 10000.0,
        "max_position_embeddings": 2048,
        "bos_token_id": None,
        "eos_token_id": None,
    },
    # A few hundred thousand parameters; q_lora_rank set so the q_a/q_b path is exercised too.
    "debug": {
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "moe_intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "n_shared_experts": 1,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "routed_scaling_factor": 2.446,
        "n_group": 1,
        "topk_group": 1,
        "first_k_dense_replace": 1,
        "kv_lora_rank": 32,
        "q_lora_rank": 32,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "v_head_dim": 16,
        "rope_theta": 10000.0,
        "max_position_embeddings": 512,
        "bos_token_id": None,
        "eos_token_id": None,
    },
}
