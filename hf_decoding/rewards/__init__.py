"""Reward and process-reward adapters for the particle decoders.

Any object with `score(prompts: list[str], partial_texts: list[str]) -> list[list[float]]` (one score per completed
step), or a plain callable with that signature, is accepted as `reward_model=`.
"""

from .arithmetic import ArithmeticStepVerifier, check_equations, extract_answer, normalize_answer
from .base import SCORE_MODES, CallableReward, RewardModel, RewardSession, as_reward_model, split_steps
from .defaults import load_default_prm
from .outcome import OutcomeRewardModel
from .process import QWEN_PRM_SYSTEM_PROMPT, ProcessRewardModel
from .self_certainty import SelfCertainty
from .training import LearnedPRM, PRMTrainingConfig, train_prm

__all__ = [
    "QWEN_PRM_SYSTEM_PROMPT",
    "SCORE_MODES",
    "ArithmeticStepVerifier",
    "CallableReward",
    "LearnedPRM",
    "OutcomeRewardModel",
    "PRMTrainingConfig",
    "ProcessRewardModel",
    "RewardModel",
    "RewardSession",
    "SelfCertainty",
    "as_reward_model",
    "check_equations",
    "extract_answer",
    "load_default_prm",
    "normalize_answer",
    "split_steps",
    "train_prm",
]
