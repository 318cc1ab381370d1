"""k1.5 RL building blocks: tasks and verifiers, code sandbox, rewards, sampling, losses, long2short,
partial-rollout buffer and repeat detection. The RL trainer composes these; none needs the model.

The model-level parts — `rollout` (partial rollouts), `RLTrainer`, the pipeline — are imported lazily
(`from muonext.rl import RLTrainer` works; `import muonext.rl` alone does not import the model,
optimizer or training packages).
"""

from .code_reward import check_code_row, code_reward, extract_code
from .config import PipelineConfig, RLConfig
from .dpo import build_dpo_pairs, dpo_loss
from .judge import UnsupportedTestError
from .length import LengthPenalty, length_reward
from .long2short import merge_state_dicts, shortest_correct_index, shortest_rejection_sampling
from .loss import group_mean, pmd_loss, sequence_logprobs, token_entropy, token_logprobs
from .repeat import RepeatDetector, Repetition, ends_in_repetition
from .replay import PartialRollout, ReplayBuffer
from .sampling import CurriculumSchedule, ProblemSampler
from .sandbox import CodeResult, SandboxLimits, run_call_tests, run_code_tests, run_stdio_tests
from .task_adapter import CodeTask, MathTask, RewardResult
from .tasks import (
    LEVELS,
    MAX_DIFFICULTY,
    Problem,
    generate_problem,
    generate_problems,
    load_problems,
    save_problems,
)
from .text_codec import CharCodec
from .verify import answers_match, extract_answer, math_reward, parse_number, verify

_LAZY = {
    "RLTrainer": ".trainer",
    "RolloutEngine": ".engine",
    "LocalSampler": ".engine",
    "Trajectory": ".rollout",
    "rollout": ".rollout",
    "Pipeline": ".pipeline",
    "run_pipeline": ".pipeline",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LEVELS",
    "MAX_DIFFICULTY",
    "CharCodec",
    "CodeResult",
    "CodeTask",
    "CurriculumSchedule",
    "LengthPenalty",
    "LocalSampler",
    "MathTask",
    "PartialRollout",
    "Pipeline",
    "PipelineConfig",
    "Problem",
    "ProblemSampler",
    "RLConfig",
    "RLTrainer",
    "RepeatDetector",
    "Repetition",
    "ReplayBuffer",
    "RewardResult",
    "RolloutEngine",
    "SandboxLimits",
    "UnsupportedTestError",
    "Trajectory",
    "answers_match",
    "build_dpo_pairs",
    "check_code_row",
    "code_reward",
    "dpo_loss",
    "ends_in_repetition",
    "extract_answer",
    "extract_code",
    "generate_problem",
    "generate_problems",
    "group_mean",
    "length_reward",
    "load_problems",
    "math_reward",
    "merge_state_dicts",
    "parse_number",
    "pmd_loss",
    "rollout",
    "run_call_tests",
    "run_code_tests",
    "run_pipeline",
    "run_stdio_tests",
    "save_problems",
    "sequence_logprobs",
    "shortest_correct_index",
    "shortest_rejection_sampling",
    "token_entropy",
    "token_logprobs",
    "verify",
]
