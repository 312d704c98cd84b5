r"""Per-token statistics of a text under a causal LM, the raw material of every detector.

All functions take the model's raw next-token logits at the scored positions, shape `(N, V)`, and the observed
tokens, shape `(N,)`, and return one value per position (float64). Sequence scores are averages of these
(see [`~hf_decoding.detection.Detector`]).

The sampler-aware statistics follow transformers' warper order and rules (temperature, then top-k with ties kept,
then top-p with the crossing token kept, then min-p). Every kept set is a prefix of the tokens sorted by
probability, so one sort per position serves a whole grid of settings:

- `n_k` = number of tokens whose logit is at least the `k`-th largest (ties kept, as `TopKLogitsWarper`);
- `n_p` = number of tokens whose *exclusive* cumulative tempered mass (renormalized over the top-k set) is
  below `p` (`TopPLogitsWarper` removes tokens whose ascending cumulative mass is at most `1 - p`);
- `n_min` = number of tokens with `p_tau(v) >= min_p * max p_tau`, i.e. `log p(v) >= log p_max + tau * log min_p`;

the kept set holds the `min(n_k, n_p, n_min)` most likely tokens, its tempered mass is
`Z = sum_{v kept} p(v) ** (1 / tau)`, and a kept token `w` has `log q(w) = log p(w) / tau - log Z`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from ..errors import invalid_argument

__all__ = [
    "DEFAULT_GRID",
    "SamplerSetting",
    "fast_detectgpt_terms",
    "log_ratio",
    "rank",
    "sampler_grid",
    "token_log_probs",
]


@dataclass(frozen=True)
class SamplerSetting:
    r"""One sampling configuration a text may have been generated with (transformers' warper semantics).

    Args:
        temperature (`float`, *optional*, defaults to 1.0): strictly positive.
        top_k (`int`, *optional*): keep the `top_k` most likely tokens (ties kept); `None` or 0 disables.
        top_p (`float`, *optional*): nucleus mass in `(0, 1]`; `None` or 1 disables.
        min_p (`float`, *optional*): min-p ratio in `[0, 1]`; `None` or 0 disables.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None

    def __post_init__(self) -> None:
        if (
            isinstance(self.temperature, bool)
            or not isinstance(self.temperature, (int, float))
            or self.temperature <= 0
        ):
            raise invalid_argument("temperature", self.temperature, "a strictly positive number")
        if self.top_k is not None and (
            isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0
        ):
            raise invalid_argument("top_k", self.top_k, "a non-negative integer or None")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise invalid_argument("top_p", self.top_p, "a number in (0, 1] or None")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise invalid_argument("min_p", self.min_p, "a number in [0, 1] or None")

    @property
    def label(self) -> str:
        """A short name, e.g. `"tau=0.7"`, `"top_k=40"`, `"tau=0.9,top_p=0.95"`."""
        parts = []
        if self.temperature != 1.0:
            parts.append(f"tau={self.temperature:g}")
        if self.top_k:
            parts.append(f"top_k={self.top_k}")
        if self.top_p is not None and self.top_p < 1:
            parts.append(f"top_p={self.top_p:g}")
        if self.min_p:
            parts.append(f"min_p={self.min_p:g}")
        return ",".join(parts) or "pure"


def sampler_grid(
    temperatures: Iterable[float] = (0.6, 0.7, 0.8, 0.9, 1.0),
    top_k: Iterable[int] = (20, 40, 50, 100),
    top_p: Iterable[float] = (0.8, 0.9, 0.95),
    min_p: Iterable[float] = (0.05, 0.1, 0.2),
) -> tuple[SamplerSetting, ...]:
    """Every temperature combined with no truncation and with each single truncation value.

    Returns:
        `tuple[SamplerSetting, ...]` of `len(temperatures) * (1 + len(top_k) + len(top_p) + len(min_p))` settings.
    """
    settings = []
    for tau in temperatures:
        settings.append(SamplerSetting(float(tau)))
        settings.extend(SamplerSetting(float(tau), top_k=int(k)) for k in top_k)
        settings.extend(SamplerSetting(float(tau), top_p=float(p)) for p in top_p)
        settings.extend(SamplerSetting(float(tau), min_p=float(m)) for m in min_p)
    return tuple(settings)


#: The default grid of the `distortion` detector: 5 temperatures x (none, 4 top-k, 3 top-p, 3 min-p) = 55 settings.
DEFAULT_GRID: tuple[SamplerSetting, ...] = sampler_grid()


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-softmax of `logits` (float64 is not needed here: float32) and the log-probability of each token.

    Returns:
        `(log_probs (N, V) float32, token_log_prob (N,) float64)`.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
    return log_probs, log_probs.gather(-1, tokens[:, None]).squeeze(-1).double()


def rank(log_probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """1-based rank of each token (1 + number of strictly more likely tokens), shape `(N,)` float64."""
    observed = log_probs.gather(-1, tokens[:, None])  # (N, 1)
    return 1.0 + (log_probs > observed).sum(-1).double()


def fast_detectgpt_terms(log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and variance of `log p(X)` for `X ~ p` at each position (the analytic Fast-DetectGPT terms).

    Returns:
        `(mean (N,), variance (N,))`, float64: `mu = sum_v p log p = -H`, `sigma^2 = sum_v p (log p)^2 - mu^2`.
    """
    probs = log_probs.exp()
    finite = torch.where(torch.isfinite(log_probs), log_probs, torch.zeros_like(log_probs))
    mean = (probs * finite).sum(-1).double()
    second = (probs * finite.square()).sum(-1).double()
    return mean, (second - mean.square()).clamp_min(0.0)


def log_ratio(
    log_probs: torch.Tensor,
    tokens: torch.Tensor,
    settings: Sequence[SamplerSetting],
    *,
    epsilon: float = 0.0,
    chunk_size: int = 256,
) -> torch.Tensor:
    r"""Per-token log-likelihood ratio `log q_theta(w_t | c_t) - log p(w_t | c_t)` for each setting `theta`.

    For a kept token this is `(1 / tau - 1) log p(w_t) - log Z_theta(c_t)`; for a token outside the kept set it is
    `-inf`. With `epsilon > 0` the machine model is the mixture `(1 - epsilon) q_theta + epsilon p` (a text that
    leaves the kept set now and then, e.g. after re-tokenization, is not ruled out), and the ratio becomes
    `log((1 - epsilon) q_theta / p + epsilon)`.

    Args:
        log_probs (`torch.FloatTensor` of shape `(N, V)`): log-softmax of the raw logits.
        tokens (`torch.LongTensor` of shape `(N,)`): observed tokens.
        settings (sequence of [`SamplerSetting`]): the grid.
        epsilon (`float`, *optional*, defaults to 0): mixture weight of the unwarped model, in `[0, 1)`.
        chunk_size (`int`, *optional*, defaults to 256): positions processed at once (bounds float64 `(N, V)` memory).

    Returns:
        `torch.DoubleTensor` of shape `(N, len(settings))`.
    """
    if not 0 <= epsilon < 1:
        raise invalid_argument("epsilon", epsilon, "a number in [0, 1)")
    n, vocab = log_probs.shape
    if n > chunk_size:
        return torch.cat(
            [
                log_ratio(
                    log_probs[i : i + chunk_size],
                    tokens[i : i + chunk_size],
                    settings,
                    epsilon=epsilon,
                    chunk_size=chunk_size,
                )
                for i in range(0, n, chunk_size)
            ]
        )
    sorted_lp = torch.sort(log_probs, dim=-1, descending=True).values  # (N, V)
    ascending = sorted_lp.flip(-1).contiguous()  # (N, V), for searchsorted
    observed = log_probs.gather(-1, tokens[:, None]).squeeze(-1)  # (N,)
    # 0-based position of the observed token in the descending order (ties: its first position).
    position = (log_probs > observed[:, None]).sum(-1)  # (N,)

    def count_at_least(threshold: torch.Tensor) -> torch.Tensor:
        """Number of tokens with log p >= threshold, shape (N,)."""
        below = torch.searchsorted(ascending, threshold[:, None].to(ascending.dtype).contiguous(), right=False).squeeze(
            -1
        )
        return vocab - below

    out = torch.empty(n, len(settings), dtype=torch.float64)
    by_tau: dict[float, list[int]] = {}
    for index, setting in enumerate(settings):
        by_tau.setdefault(float(setting.temperature), []).append(index)
    for tau, indices in by_tau.items():
        scaled = sorted_lp.double() / tau  # (N, V)
        log_cum = torch.logcumsumexp(scaled, dim=-1)  # (N, V): log of the tempered mass of the top-j tokens
        # Exclusive cumulative mass: log of the tempered mass of the tokens strictly before position j.
        exclusive = torch.cat([torch.full((n, 1), -math.inf, dtype=torch.float64), log_cum[:, :-1]], dim=-1)
        for index in indices:
            setting = settings[index]
            kept = torch.full((n,), vocab, dtype=torch.long)
            if setting.top_k:
                k = min(int(setting.top_k), vocab)
                kept = torch.minimum(kept, count_at_least(sorted_lp[:, k - 1]))
            if setting.top_p is not None and setting.top_p < 1:
                # Exclusive cumulative mass, renormalized over the tokens kept so far, must stay below p.
                mass_kept = log_cum.gather(-1, (kept - 1)[:, None])  # (N, 1)
                limit = mass_kept + math.log(setting.top_p)  # (N, 1)
                n_p = torch.searchsorted(exclusive, limit, right=False).squeeze(-1)  # count(exclusive < limit)
                kept = torch.minimum(kept, n_p.clamp_min(1))
            if setting.min_p:
                threshold = sorted_lp[:, 0].double() + tau * math.log(setting.min_p)
                kept = torch.minimum(kept, count_at_least(threshold.float()).clamp_min(1))
            log_z = log_cum.gather(-1, (kept - 1)[:, None]).squeeze(-1)  # (N,)
            ratio = (1.0 / tau - 1.0) * observed.double() - log_z  # (N,)
            ratio = torch.where(position < kept, ratio, torch.full_like(ratio, -math.inf))
            if epsilon > 0:
                ratio = torch.logaddexp(ratio + math.log1p(-epsilon), torch.full_like(ratio, math.log(epsilon)))
            out[:, index] = ratio
    return out
