"""Log-space particle weights: normalisation, effective sample size and the evidence (log-normalizer) estimate.

Every function takes unnormalised log-weights of shape `(B, N)` (B groups of N particles) and handles the case
where a whole group is `-inf` (every particle impossible) explicitly instead of producing NaN:

- its normalised weights are uniform (resampling then keeps the population as it is, up to a permutation),
- its effective sample size is `0`,
- its log-evidence is `-inf`.

Evidence bookkeeping follows the rule of `llamppl`'s `smc_standard`: particles keep *unnormalised* log-weights, and
after resampling every weight of the group is set to the group's mean weight `log(mean(exp(lw)))` instead of `0`.
The log-mean-exp of the current weights is then, at any point, an unbiased estimate (in `exp` space) of the
normalizer `Z = E_p[prod_t G_t]` of the target `p(x) prod_t G_t(x_{1:t})`; see [`log_evidence`].
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "add_log_increments",
    "ess",
    "log_evidence",
    "log_mean_exp",
    "normalize_log_weights",
    "reset_after_resampling",
    "should_resample",
]


def log_mean_exp(log_weights: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """`log(mean(exp(x)))` along `dim`, `-inf` when every entry is `-inf` (never NaN)."""
    n = log_weights.shape[dim]
    return torch.logsumexp(log_weights, dim=dim) - math.log(n)


def normalize_log_weights(log_weights: torch.Tensor) -> torch.Tensor:
    """Normalised log-weights `log W` of shape `(B, N)`; a group that is entirely `-inf` gets uniform weights.

    Args:
        log_weights (`torch.Tensor` of shape `(B, N)`): unnormalised log-weights; `-inf` allowed, NaN and `+inf`
            are not (the reward adapters never produce them).
    """
    total = torch.logsumexp(log_weights, dim=-1, keepdim=True)  # (B, 1)
    dead = torch.isneginf(total)  # (B, 1): every particle of the group has weight 0
    normalized = log_weights - torch.where(dead, torch.zeros_like(total), total)
    uniform = torch.full_like(log_weights, -math.log(log_weights.shape[-1]))
    return torch.where(dead, uniform, normalized)


def ess(log_weights: torch.Tensor) -> torch.Tensor:
    """Effective sample size `1 / sum_i W_i^2` of each group, shape `(B,)`; `0` for an all `-inf` group."""
    total = torch.logsumexp(log_weights, dim=-1)  # (B,)
    dead = torch.isneginf(total)
    log_w = log_weights - torch.where(dead, torch.zeros_like(total), total)[:, None]
    value = torch.exp(-torch.logsumexp(2 * log_w, dim=-1))  # (B,)
    return torch.where(dead, torch.zeros_like(value), value)


def should_resample(log_weights: torch.Tensor, ess_threshold: float) -> torch.Tensor:
    """Which groups to resample, shape `(B,)` bool: `ESS < ess_threshold * N`; `ess_threshold >= 1` means always.

    `1.0` is "every step" (the reference behaviour) even though a uniform population has `ESS == N` exactly;
    `0.0` means never.
    """
    batch, n = log_weights.shape
    if ess_threshold >= 1.0:
        return torch.ones(batch, dtype=torch.bool, device=log_weights.device)
    return ess(log_weights) < ess_threshold * n


def add_log_increments(log_weights: torch.Tensor, increments: torch.Tensor) -> torch.Tensor:
    """`log_weights + increments`, keeping `-inf + anything = -inf` (avoids NaN from `-inf + inf`)."""
    out = log_weights + increments
    return torch.where(torch.isneginf(log_weights) | torch.isneginf(increments), torch.full_like(out, -math.inf), out)


def reset_after_resampling(log_weights: torch.Tensor, resampled: torch.Tensor | None = None) -> torch.Tensor:
    """Sets every weight of the resampled groups to the group's mean weight (keeps the evidence estimate unbiased).

    Args:
        log_weights (`torch.Tensor` of shape `(B, N)`): log-weights *before* resampling.
        resampled (`torch.BoolTensor` of shape `(B,)`, *optional*): groups that were resampled (default: all).
    """
    mean = log_mean_exp(log_weights, dim=-1)[:, None].expand_as(log_weights)  # (B, N)
    if resampled is None:
        return mean.clone()
    return torch.where(resampled[:, None], mean, log_weights)


def log_evidence(log_weights: torch.Tensor) -> torch.Tensor:
    """SMC estimate of the log-normalizer of each group, shape `(B,)`: `log(mean_i exp(lw_i))`.

    Valid at any time when the weights were maintained with [`add_log_increments`] and
    [`reset_after_resampling`]; `exp` of it is unbiased for `Z`.
    """
    return log_mean_exp(log_weights, dim=-1)
