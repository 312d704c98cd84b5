"""Sequential Monte Carlo pieces the particle decoders share: their keyword arguments declared once
(`arguments`), options and presets (`options`), the step runner (`steps`: one reasoning step for every live
particle), the batched particle state (`state`), the sweep (`sweep`), log-space weights, resampling schemes, final
selection, and what every particle decoder does before and after its own part (`decoding`)."""

from .cost import PHASES, CostMeter
from .options import FINISHED_MODES, PRESETS, SCORE_MODES, WEIGHT_TRANSFORMS, WEIGHT_UPDATES, ParticleOptions
from .potentials import aggregate_scores, log_potentials
from .resampling import (
    RESAMPLING_SCHEMES,
    get_resampler,
    multinomial,
    offspring_counts,
    resample,
    residual,
    stable_ancestors,
    stratified,
    systematic,
)
from .selection import (
    SELECTION_METHODS,
    extract_answer,
    majority_vote,
    normalize_answer,
    select_particles,
    weighted_vote,
)
from .state import ParticleBatch, PrefilledPrompts, flat_ancestors
from .sweep import NoResampling, ParticleSweep, ReferencePath, ResamplingPolicy, SweepResult, TopKPolicy
from .weights import (
    add_log_increments,
    ess,
    log_evidence,
    log_mean_exp,
    normalize_log_weights,
    reset_after_resampling,
    should_resample,
)

__all__ = [
    "FINISHED_MODES",
    "PHASES",
    "PRESETS",
    "RESAMPLING_SCHEMES",
    "SCORE_MODES",
    "SELECTION_METHODS",
    "WEIGHT_TRANSFORMS",
    "WEIGHT_UPDATES",
    "CostMeter",
    "NoResampling",
    "ParticleBatch",
    "ParticleOptions",
    "ParticleSweep",
    "PrefilledPrompts",
    "ReferencePath",
    "ResamplingPolicy",
    "SweepResult",
    "TopKPolicy",
    "add_log_increments",
    "aggregate_scores",
    "ess",
    "extract_answer",
    "flat_ancestors",
    "get_resampler",
    "log_evidence",
    "log_mean_exp",
    "log_potentials",
    "majority_vote",
    "multinomial",
    "normalize_answer",
    "normalize_log_weights",
    "offspring_counts",
    "resample",
    "reset_after_resampling",
    "residual",
    "select_particles",
    "should_resample",
    "stable_ancestors",
    "stratified",
    "systematic",
    "weighted_vote",
]
