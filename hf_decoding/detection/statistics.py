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
    top_size: int = 1024,
) -> torch.Tensor:
    r"""Per-token log-likelihood ratio `log q_theta(w_t | c_t) - log p(w_t | c_t)` for each setting `theta`.

    For a kept token this is `(1 / tau - 1) log p(w_t) - log Z_theta(c_t)`; for a token outside the kept set it is
    `-inf`. With `epsilon > 0` the machine model is the mixture `(1 - epsilon) q_theta + epsilon p` (a text that
    leaves the kept set now and then, e.g. after re-tokenization, is not ruled out), and the ratio becomes
    `log((1 - epsilon) q_theta / p + epsilon)`.

    Kept sets are found among the `top_size` most likely tokens (one `topk` instead of a full sort); positions whose
    kept set may extend beyond them are recomputed with a full sort, so the result is exact either way.

    Args:
        log_probs (`torch.FloatTensor` of shape `(N, V)`): log-softmax of the raw logits.
        tokens (`torch.LongTensor` of shape `(N,)`): observed tokens.
        settings (sequence of [`SamplerSetting`]): the grid.
        epsilon (`float`, *optional*, defaults to 0): mixture weight of the unwarped model, in `[0, 1)`.
        top_size (`int`, *optional*, defaults to 1024): tokens examined before the full-sort fallback.

    Returns:
        `torch.DoubleTensor` of shape `(N, len(settings))`.
    """
    if not 0 <= epsilon < 1:
        raise invalid_argument("epsilon", epsilon, "a number in [0, 1)")
    vocab = log_probs.shape[-1]
    observed = log_probs.gather(-1, tokens[:, None]).squeeze(-1)  # (N,)
    # 0-based position of the observed token in the descending order (ties: its first position).
    position = (log_probs > observed[:, None]).sum(-1)  # (N,)
    taus = sorted({float(s.temperature) for s in settings})
    # log sum_v p(v)^(1/tau) over the whole vocabulary, per temperature: (N, num_taus).
    lse = torch.stack([torch.logsumexp(log_probs / tau, -1).double() for tau in taus], -1)
    size = min(vocab, max(1, int(top_size)))
    top = torch.topk(log_probs, size, dim=-1).values  # (N, K), descending
    out, saturated = _log_ratio_sorted(top, vocab, observed, position, lse, taus, settings)
    if bool(saturated.any()):
        rows = saturated.nonzero().squeeze(-1)
        full = torch.sort(log_probs[rows], dim=-1, descending=True).values  # (R, V)
        out[rows], _ = _log_ratio_sorted(full, vocab, observed[rows], position[rows], lse[rows], taus, settings)
    if epsilon > 0:
        out = torch.logaddexp(out + math.log1p(-epsilon), torch.full_like(out, math.log(epsilon)))
    return out


def _log_ratio_sorted(
    sorted_lp: torch.Tensor,
    vocab: int,
    observed: torch.Tensor,
    position: torch.Tensor,
    lse: torch.Tensor,
    taus: list[float],
    settings: Sequence[SamplerSetting],
) -> tuple[torch.Tensor, torch.Tensor]:
    """[`log_ratio`] from the `K` largest log-probabilities (descending); also says which rows need more than `K`."""
    n, size = sorted_lp.shape
    partial = size < vocab
    ascending = sorted_lp.flip(-1).contiguous()  # (N, K), for searchsorted
    saturated = torch.zeros(n, dtype=torch.bool)
    full = torch.full((n,), vocab, dtype=torch.long)

    def count_at_least(threshold: torch.Tensor) -> torch.Tensor:
        """Number of tokens with log p >= threshold (`size` may mean 'size or more'), shape (N,)."""
        query = threshold[:, None].to(ascending.dtype).contiguous()
        return size - torch.searchsorted(ascending, query, right=False).squeeze(-1)

    out = torch.empty(n, len(settings), dtype=torch.float64)
    for t, tau in enumerate(taus):
        log_cum = torch.logcumsumexp(sorted_lp.double() / tau, dim=-1)  # (N, K): log tempered mass of the top j
        total = lse[:, t]  # (N,)
        # Exclusive cumulative mass: log of the tempered mass of the tokens strictly before position j.
        exclusive = torch.cat([torch.full((n, 1), -math.inf, dtype=torch.float64), log_cum[:, :-1]], dim=-1)

        def log_mass(kept: torch.Tensor, log_cum: torch.Tensor = log_cum, total: torch.Tensor = total) -> torch.Tensor:
            """log of the tempered mass of the `kept` most likely tokens, (N,)."""
            inside = log_cum.gather(-1, (kept.clamp(max=size) - 1)[:, None]).squeeze(-1)
            return torch.where(kept >= vocab, total, inside)

        for index, setting in enumerate(settings):
            if float(setting.temperature) != tau:
                continue
            kept = full.clone()
            if setting.top_k and setting.top_k < vocab:
                if setting.top_k > size:
                    saturated |= True
                else:
                    count = count_at_least(sorted_lp[:, setting.top_k - 1])
                    saturated |= partial & (count >= size)
                    kept = torch.minimum(kept, count)
            if setting.top_p is not None and setting.top_p < 1:
                # Exclusive cumulative mass, renormalized over the tokens kept so far, must stay below p.
                limit = (log_mass(kept) + math.log(setting.top_p))[:, None]  # (N, 1)
                count = torch.searchsorted(exclusive, limit, right=False).squeeze(-1)  # count(exclusive < limit)
                saturated |= partial & (count >= size)
                kept = torch.minimum(kept, count.clamp_min(1))
            if setting.min_p:
                threshold = sorted_lp[:, 0].double() + tau * math.log(setting.min_p)
                count = count_at_least(threshold.float()).clamp_min(1)
                saturated |= partial & (count >= size)
                kept = torch.minimum(kept, count)
            ratio = (1.0 / tau - 1.0) * observed.double() - log_mass(kept)  # (N,)
            out[:, index] = torch.where(position < kept, ratio, torch.full_like(ratio, -math.inf))
    return out, saturated
