"""Unmasking schedules: how many masked positions a masked-diffusion sampler reveals at each step.

A schedule maps `(num_tokens, steps)` to `steps` non-negative integers that sum to `num_tokens`. They are the
`s_t` of Li & Cai (arXiv 2505.21400): the `linear` schedule is their balanced schedule (`s_max = ceil(L / T)`).
"""

from __future__ import annotations

import itertools
import math

from ..errors import invalid_argument

__all__ = ["SCHEDULES", "unmasking_schedule"]

#: Valid values of `unmasking_schedule=`.
SCHEDULES = ("cosine", "dream", "linear")


def unmasking_schedule(num_tokens: int, steps: int, schedule: str = "linear", eps: float = 1e-3) -> list[int]:
    r"""Number of positions to unmask at each step.

    Args:
        num_tokens (`int`): masked positions to fill (the block length).
        steps (`int`): denoising steps for these positions.
        schedule (`str`, *optional*, defaults to `"linear"`):
            - `"linear"`: LLaDA's `get_num_transfer_tokens`: `num_tokens // steps` per step, one more in the first
              `num_tokens % steps` steps. This is the balanced schedule of Li & Cai's Corollary 1.
            - `"cosine"`: MaskGIT's schedule: after step `t` a fraction `cos(pi / 2 * t / steps)` is still masked, so
              few tokens are revealed early and many late; every step reveals at least one token when
              `num_tokens >= steps`.
            - `"dream"`: Dream's `diffusion_generate` schedule: times `linspace(1, eps, steps + 1)`; step `i` reveals
              `int(m * (1 - s / t))` of the `m` still-masked positions, the last step all that remain. Early steps
              may reveal nothing (Dream still pays a forward pass for them; `hf_decoding` skips it).
        eps (`float`, *optional*, defaults to `1e-3`): the final time of the `"dream"` schedule.

    Returns:
        `list[int]` of length `steps`, summing to `num_tokens`.

    Raises:
        [`InvalidDecodingArgument`]: `steps < 1`, `num_tokens < 0`, an unknown schedule or `eps` outside `(0, 1)`.
    """
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 0:
        raise invalid_argument("num_tokens", num_tokens, "a non-negative integer")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise invalid_argument("diffusion_steps", steps, "a positive integer", "Pass e.g. diffusion_steps=gen_length.")
    if schedule == "linear":
        base, remainder = divmod(num_tokens, steps)
        return [base + (1 if i < remainder else 0) for i in range(steps)]
    if schedule == "cosine":
        cumulative = [0]
        for t in range(1, steps + 1):
            still_masked = math.floor(num_tokens * math.cos(math.pi / 2 * t / steps) + 1e-9)
            target = num_tokens - still_masked if t < steps else num_tokens
            if num_tokens >= steps:  # keep every step useful: at least one token, and room for the rest
                target = min(max(target, cumulative[-1] + 1), num_tokens - (steps - t))
            cumulative.append(max(target, cumulative[-1]))
        return [b - a for a, b in itertools.pairwise(cumulative)]
    if schedule == "dream":
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
            raise invalid_argument("schedule_eps", eps, "a number in (0, 1)", "Dream uses 1e-3.")
        times = [1 + (eps - 1) * i / steps for i in range(steps + 1)]
        remaining, counts = num_tokens, []
        for i in range(steps):
            if i == steps - 1:
                k = remaining
            else:
                k = int(remaining * (1 - times[i + 1] / times[i]))
            counts.append(k)
            remaining -= k
        return counts
    raise invalid_argument("unmasking_schedule", schedule, f"one of {', '.join(map(repr, SCHEDULES))}")
