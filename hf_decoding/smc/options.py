"""Options of the step-level particle methods: one validated dataclass, the `"paper"` preset, and resolution
from the call, the generation config and the preset."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from transformers import GenerationConfig

from ..errors import invalid_argument
from ..generation.loop import option
from .resampling import RESAMPLING_SCHEMES
from .selection import SELECTION_METHODS

__all__ = [
    "FINISHED_MODES",
    "PRESETS",
    "SCORE_MODES",
    "WEIGHT_TRANSFORMS",
    "WEIGHT_UPDATES",
    "ParticleOptions",
    "resolve_options",
]

SCORE_MODES = ("model", "last", "min", "prod")
WEIGHT_TRANSFORMS = ("logit", "log", "identity")
WEIGHT_UPDATES = ("potential", "twisted")
FINISHED_MODES = ("absorb", "reference")


@dataclass
class ParticleOptions:
    """Every option of the step-level particle filter (and of the methods built on it).

    Args:
        num_particles (`int`, defaults to 8): N, particles per prompt (`>= 1`).
        score_mode (`str`, defaults to `"model"`): how step scores become one score per particle:
            `model` (the reward model scores the whole prefix as one step; the paper's best), `last`, `min`, `prod`.
        weight_transform (`str`, defaults to `"logit"`): score → log-potential: `logit` (`log(r/(1-r))`, the
            reference code), `log` (`log r`, the Bernoulli likelihood of the paper's theory), `identity` (`r`, the
            paper's Algorithm 1, `softmax(r)`).
        softmax_temperature (`float`, defaults to 1.0): log-potentials are divided by it (`> 0`).
        weight_update (`str`, defaults to `"potential"`): incremental log-weight of a step: `potential` (the step's
            log-potential `g_t`; with resampling at every step this is the reference code's `softmax(g_t)`) or
            `twisted` (`g_t - g_{t-1}`, twisted SMC: the final target is `p(x) G_T(x)`).
        resampling (`str`, defaults to `"systematic"`): `systematic | stratified | multinomial | residual`.
        ess_threshold (`float`, defaults to 0.5): resample when `ESS < ess_threshold * N`; `1.0` = every step,
            `0.0` = never. In `[0, 1]`.
        finished_particles (`str`, defaults to `"absorb"`): `absorb` (no more generation or reward calls; weight
            kept, i.e. a zero increment; may still be duplicated by resampling) or `reference` (as the reference
            code with `--resample-inactive`: a finished particle re-enters every resampling with its last
            log-potential as increment; the step the reference code generates and scores for it and then
            discards is not reproduced, as it does not change the result).
        selection (`str`, defaults to `"argmax"`): `argmax` (highest final reward), `sample` (one draw from the
            final weights), `weighted_vote` (answer with the largest summed weight; needs an answer extractor).
        on_reward_error (`str`, defaults to `"raise"`): `raise` (`RewardModelError` naming particle and step) or
            `neg_inf` (the particle gets log-weight `-inf`, with a warning).
    """

    num_particles: int = 8
    score_mode: str = "model"
    weight_transform: str = "logit"
    softmax_temperature: float = 1.0
    weight_update: str = "potential"
    resampling: str = "systematic"
    ess_threshold: float = 0.5
    finished_particles: str = "absorb"
    selection: str = "argmax"
    on_reward_error: str = "raise"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.num_particles
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise invalid_argument("num_particles", n, "a positive integer", "Use e.g. num_particles=8.")
        for name, valid in (
            ("score_mode", SCORE_MODES),
            ("weight_transform", WEIGHT_TRANSFORMS),
            ("weight_update", WEIGHT_UPDATES),
            ("resampling", tuple(sorted(RESAMPLING_SCHEMES))),
            ("finished_particles", FINISHED_MODES),
            ("selection", SELECTION_METHODS),
            ("on_reward_error", ("raise", "neg_inf")),
        ):
            value = getattr(self, name)
            if value not in valid:
                raise invalid_argument(name, value, "one of " + ", ".join(repr(v) for v in valid))
        t = self.softmax_temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise invalid_argument("softmax_temperature", t, "a finite number > 0")
        e = self.ess_threshold
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0.0 <= e <= 1.0:
            raise invalid_argument("ess_threshold", e, "a number in [0, 1]", "1.0 resamples at every step, 0.0 never.")


#: Presets: values used for options the call and the generation config leave unset.
PRESETS: dict[str, dict[str, Any]] = {
    # The reference code (probabilistic-inference-scaling, its_hub): softmax(logit(r)) of the current step's
    # "model-aggregated" PRM score, multinomial resampling at every step, finished particles compete on their last
    # reward, argmax of the last reward, "\n\n" steps, `\boxed` ends a particle, at most 40 steps.
    "paper": {
        "score_mode": "model",
        "weight_transform": "logit",
        "softmax_temperature": 1.0,
        "weight_update": "potential",
        "resampling": "multinomial",
        "ess_threshold": 1.0,
        "finished_particles": "reference",
        "selection": "argmax",
        "step_delimiter": "\n\n",
        "stop_pattern": r"\\boxed",
        "max_steps": 40,
    },
}


def resolve_options(
    generation_config: GenerationConfig, preset: str | None, values: dict[str, Any], defaults: dict[str, Any]
) -> dict[str, Any]:
    """Each option's value: the call's, else `generation_config.<name>`, else the preset's, else `defaults`.

    Args:
        generation_config (`GenerationConfig`): the call's merged config.
        preset (`str`, *optional*): a key of [`PRESETS`].
        values (`dict`): the call's values (`None` = unset).
        defaults (`dict`): the decoder's defaults.
    """
    preset = option(generation_config, "preset", preset, None)
    if preset is not None and preset not in PRESETS:
        raise invalid_argument("preset", preset, "one of " + ", ".join(repr(p) for p in PRESETS) + " or None")
    base = dict(defaults)
    if preset is not None:
        base.update({k: v for k, v in PRESETS[preset].items() if k in base})
    return {name: option(generation_config, name, values.get(name), base.get(name)) for name in base}


def particle_options(resolved: dict[str, Any]) -> ParticleOptions:
    """A validated [`ParticleOptions`] from resolved values (unknown keys go to `extra`)."""
    names = {f.name for f in fields(ParticleOptions)} - {"extra"}
    known = {k: v for k, v in resolved.items() if k in names}
    return ParticleOptions(**known, extra={k: v for k, v in resolved.items() if k not in names})
