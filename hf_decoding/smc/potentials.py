"""From reward scores to log-potentials: score aggregation (`model|last|min|prod`) and weight transforms
(`logit|log|identity`) with a softmax temperature."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import RewardModelError

__all__ = ["LOGIT_EPS", "aggregate_scores", "log_potentials"]

#: `logit` clamps scores to `[LOGIT_EPS, 1 - LOGIT_EPS]` (as the reference code's `inverse_sigmoid` guards 0 and 1).
LOGIT_EPS = 1e-6


def aggregate_scores(step_scores: Sequence[float], mode: str) -> float:
    """One score from a particle's step scores.

    `model` expects the reward model's own whole-prefix score (a one-element list, see
    [`~hf_decoding.rewards.RewardModel.score_whole`]) and returns it; `last` the last step's score; `min` the
    smallest; `prod` the product. `-inf` (a failed reward) propagates.
    """
    if not step_scores:
        return math.nan
    if mode in ("model", "last"):
        return float(step_scores[-1])
    if mode == "min":
        return float(min(step_scores))
    if mode == "prod":
        if any(s == -math.inf for s in step_scores):
            return -math.inf
        return float(math.prod(step_scores))
    raise ValueError(f"unknown score mode {mode!r}")


def log_potentials(scores: torch.Tensor, transform: str, temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Log-potentials `g = transform(score) / temperature`, same shape as `scores`.

    - `logit`: `log(r / (1 - r))` with `r` clamped to `[LOGIT_EPS, 1 - LOGIT_EPS]`;
    - `log`: `log r` (`r = 0` gives `-inf`, an impossible particle);
    - `identity`: `r`.

    `-inf` scores (a failed reward under `on_reward_error="neg_inf"`) give `-inf`. NaN entries (no score) stay NaN;
    callers mask them. `logit`/`log` need scores in `[0, 1]`: anything else raises [`RewardModelError`].
    """
    scores = scores.to(torch.float64)
    failed = torch.isneginf(scores)
    finite = scores[torch.isfinite(scores)]
    if transform in ("logit", "log") and finite.numel() and bool(((finite < -1e-6) | (finite > 1 + 1e-6)).any()):
        bad = finite[(finite < -1e-6) | (finite > 1 + 1e-6)][0].item()
        raise RewardModelError(
            f"weight_transform={transform!r} needs reward scores in [0, 1] (probabilities), got {bad!r}. Fix: use "
            "weight_transform='identity' for unbounded rewards, or squash the reward into [0, 1]."
        )
    if transform == "logit":
        r = scores.clamp(LOGIT_EPS, 1 - LOGIT_EPS)
        g = torch.log(r) - torch.log1p(-r)
    elif transform == "log":
        g = torch.log(scores.clamp(min=0.0))
    elif transform == "identity":
        g = scores.clone()
    else:
        raise ValueError(f"unknown weight transform {transform!r}")
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.to(torch.float64)
    g = g / temperature
    return torch.where(failed, torch.full_like(g, -math.inf), g)
