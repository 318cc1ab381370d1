"""Moonlight (DeepSeek-V3 architecture): config, model, generation, transformers conversion.

from muonext.models import MoonlightConfig, MoonlightForCausalLM, generate
model = MoonlightForCausalLM(MoonlightConfig.preset("tiny"))
"""

from .config import MoonlightConfig
from .generation import GenerationResult, GenerationState, generate, sample_next
from .hf import from_pretrained, save_pretrained
from .moonlight import MoonlightForCausalLM, MoonlightOutput

__all__ = [
    "GenerationResult",
    "GenerationState",
    "MoonlightConfig",
    "MoonlightForCausalLM",
    "MoonlightOutput",
    "from_pretrained",
    "generate",
    "sample_next",
    "save_pretrained",
]
