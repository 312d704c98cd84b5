"""Mass matching: the parameter of a strategy whose mean kept mass over a set of contexts equals a target."""

from __future__ import annotations

import logging

import torch

from ...errors import invalid_argument
from .strategies import _check_strategy, _mean_mass

logger = logging.getLogger(__name__)


def match_mass(
    logits: torch.Tensor, target_mass: float, strategy: str, *, tol: float = 1e-4, max_iter: int = 60
) -> float:
    r"""The parameter of `strategy` whose **mean** kept mass over the contexts equals `target_mass`.

    Bisection on the monotone map parameter -> mean [`kept_mass`]: increasing in `p` (top-p) and `tau`
    (temperature, searched in `(0, 1]`), decreasing in `min_p`. For `"top_k"` the search is over integers and
    returns the `k` whose mean mass is closest to the target. For `"distortion_aware_nucleus"` the kept mass is
    exactly `p`, so the answer is `target_mass` itself. Top-p's mean mass is a step function of `p`; the bisection
    returns a point of the step that brackets the target.

    Args:
        logits (`torch.FloatTensor` of shape `(num_contexts, vocab_size)`): raw next-token logits.
        target_mass (`float`): mean kept mass to reach, in `(0, 1)`.
        strategy (`str`): one of [`STRATEGIES`].
        tol (`float`, *optional*, defaults to `1e-4`): stop when the mean mass is this close to the target.
        max_iter (`int`, *optional*, defaults to 60): bisection steps for the continuous parameters.

    Returns:
        `float`: the parameter (an `int` for `"top_k"`). When the target lies outside the reachable range (e.g.
        below the mean probability of the top token), the closest end of the range is returned with a warning log.
    """
    _check_strategy(strategy)
    if isinstance(target_mass, bool) or not isinstance(target_mass, (int, float)) or not 0 < target_mass < 1:
        raise invalid_argument("target_mass", target_mass, "a number in (0, 1)")
    if strategy == "distortion_aware_nucleus":
        return float(target_mass)

    if strategy == "top_k":
        lo, hi = 1, logits.shape[-1]
        mass_lo = _mean_mass(logits, strategy, lo)
        if mass_lo >= target_mass:
            if mass_lo > target_mass + tol:
                logger.warning("top_k=1 already keeps mean mass %.4f > target %.4f.", mass_lo, target_mass)
            return 1
        mass_hi = 1.0
        # Invariant: mean mass(lo) < target <= mean mass(hi).
        while hi - lo > 1:
            mid = (lo + hi) // 2
            mass_mid = _mean_mass(logits, strategy, mid)
            if mass_mid >= target_mass:
                hi, mass_hi = mid, mass_mid
            else:
                lo, mass_lo = mid, mass_mid
        return lo if abs(mass_lo - target_mass) < abs(mass_hi - target_mass) else hi

    increasing = strategy != "min_p"
    lo, hi = {"top_p": (1e-6, 1.0), "temperature": (1e-2, 1.0), "min_p": (0.0, 1.0)}[strategy]
    mass_at = {lo: _mean_mass(logits, strategy, lo), hi: _mean_mass(logits, strategy, hi)}
    low_end, high_end = (lo, hi) if increasing else (hi, lo)  # parameter giving the smallest / largest mass
    if mass_at[low_end] >= target_mass:
        logger.warning(
            "%s=%g already keeps mean mass %.4f >= target %.4f.", strategy, low_end, mass_at[low_end], target_mass
        )
        return float(low_end)
    if mass_at[high_end] <= target_mass:
        return float(high_end)
    mid = (lo + hi) / 2
    for _ in range(max_iter):
        mid = (lo + hi) / 2
        mass_mid = _mean_mass(logits, strategy, mid)
        if abs(mass_mid - target_mass) <= tol:
            break
        if (mass_mid < target_mass) == increasing:
            lo = mid
        else:
            hi = mid
    return float(mid)
