"""Masked-diffusion language models: adapters, schedules, position rules, the sampling loop, toy joints with a
perfect denoiser, and a small trainable denoiser (`hf_decoding.diffusion.training`)."""

from .adapters import MaskedDiffusionAdapter, resolve_mask_token_id
from .config import MaskedDiffusionConfig
from .outputs import MaskedDiffusionOutput
from .sampling import DenoisingResult, masked_diffusion_sample
from .schedules import SCHEDULES, unmasking_schedule
from .selection import (
    ADAPTIVE_RULES,
    CONFIDENCE_SOURCES,
    POSITION_RULES,
    Candidates,
    commit_counts,
    position_scores,
    sample_candidates,
    select_positions,
)
from .toy import EnumeratedJoint, JointTableDenoiser, hidden_markov_joint, markov_chain_joint

__all__ = [
    "ADAPTIVE_RULES",
    "CONFIDENCE_SOURCES",
    "POSITION_RULES",
    "SCHEDULES",
    "Candidates",
    "DenoisingResult",
    "EnumeratedJoint",
    "JointTableDenoiser",
    "MaskedDiffusionAdapter",
    "MaskedDiffusionConfig",
    "MaskedDiffusionOutput",
    "commit_counts",
    "hidden_markov_joint",
    "markov_chain_joint",
    "masked_diffusion_sample",
    "position_scores",
    "resolve_mask_token_id",
    "sample_candidates",
    "select_positions",
    "unmasking_schedule",
]
