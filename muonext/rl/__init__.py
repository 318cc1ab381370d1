"""k1.5 RL building blocks: tasks and verifiers, code sandbox, rewards, sampling, losses, long2short,
partial-rollout buffer and repeat detection. The RL trainer composes these; none needs the model.
"""

from .dpo import build_dpo_pairs, dpo_loss
from .length import LengthPenalty, length_reward
from .long2short import merge_state_dicts, shortest_correct_index, shortest_rejection_sampling
from .loss import group_mean, pmd_loss, sequence_logprobs, token_entropy, token_logprobs
from .repeat import RepeatDetector, Repetition, ends_in_repetition
from .replay import PartialRollout, ReplayBuffer
from .sampling import CurriculumSchedule, ProblemSampler
from .sandbox import CodeResult, SandboxLimits, run_code_tests
from .tasks import (
    LEVELS,
    MAX_DIFFICULTY,
    Problem,
    generate_problem,
    generate_problems,
    load_problems,
    save_problems,
)
from .verify import answers_match, extract_answer, math_reward, parse_number, verify

__all__ = [
    "LEVELS",
    "MAX_DIFFICULTY",
    "CodeResult",
    "CurriculumSchedule",
    "LengthPenalty",
    "PartialRollout",
    "Problem",
    "ProblemSampler",
    "RepeatDetector",
    "Repetition",
    "ReplayBuffer",
    "SandboxLimits",
    "answers_match",
    "build_dpo_pairs",
    "dpo_loss",
    "ends_in_repetition",
    "extract_answer",
    "generate_problem",
    "generate_problems",
    "group_mean",
    "length_reward",
    "load_problems",
    "math_reward",
    "merge_state_dicts",
    "parse_number",
    "pmd_loss",
    "run_code_tests",
    "save_problems",
    "sequence_logprobs",
    "shortest_correct_index",
    "shortest_rejection_sampling",
    "token_entropy",
    "token_logprobs",
    "verify",
]
