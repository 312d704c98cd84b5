"""Logits processors: per-row warpers, the distortion-aware nucleus and distortion measurement."""

from .base import LogitsWarper
from .distortion import DistortionTracker, distortion_from_scores, is_warper, warper_temperature
from .distortion_aware_nucleus import DistortionAwareNucleusLogitsProcessor
from .per_row import (
    PerRowMinPLogitsWarper,
    PerRowTemperatureLogitsWarper,
    PerRowTopKLogitsWarper,
    PerRowTopPLogitsWarper,
)
from .token_probability import TokenProbabilityLogitsProcessor

__all__ = [
    "DistortionAwareNucleusLogitsProcessor",
    "DistortionTracker",
    "LogitsWarper",
    "PerRowMinPLogitsWarper",
    "PerRowTemperatureLogitsWarper",
    "PerRowTopKLogitsWarper",
    "PerRowTopPLogitsWarper",
    "TokenProbabilityLogitsProcessor",
    "distortion_from_scores",
    "is_warper",
    "warper_temperature",
]
