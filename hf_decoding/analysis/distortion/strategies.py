"""The strategy table (names, parameters) and the kept mass `Z` of a strategy on raw logits."""

from __future__ import annotations

from typing import Any

import torch

from ...errors import invalid_argument
from ...processors import (
    DistortionAwareNucleusLogitsProcessor,
    PerRowMinPLogitsWarper,
    PerRowTemperatureLogitsWarper,
    PerRowTopKLogitsWarper,
    PerRowTopPLogitsWarper,
    distortion_from_scores,
)

STRATEGIES: tuple[str, ...] = ("top_k", "top_p", "temperature", "min_p", "distortion_aware_nucleus")

#: Strategies compared by default (the paper's three, plus ours).
DEFAULT_STRATEGIES: tuple[str, ...] = ("top_k", "top_p", "temperature", "distortion_aware_nucleus")

#: Name of the parameter of each strategy, as printed in tables.
PARAMETER_NAMES: dict[str, str] = {
    "top_k": "k",
    "top_p": "p",
    "temperature": "tau",
    "min_p": "min_p",
    "distortion_aware_nucleus": "p",
}


def _check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise invalid_argument("strategy", strategy, "one of " + ", ".join(repr(s) for s in STRATEGIES))
    return strategy


def _warper(strategy: str, value: float) -> Any:
    """The processor that applies `strategy` with parameter `value` (temperature 1 for the truncations)."""
    if strategy == "top_k":
        if isinstance(value, bool) or float(value) != int(value) or int(value) < 0:
            raise invalid_argument("value", value, "a non-negative integer k for strategy='top_k'")
        return PerRowTopKLogitsWarper(int(value))
    if strategy == "top_p":
        return PerRowTopPLogitsWarper(float(value))
    if strategy == "min_p":
        return PerRowMinPLogitsWarper(float(value))
    if strategy == "temperature":
        return PerRowTemperatureLogitsWarper(float(value))
    return DistortionAwareNucleusLogitsProcessor(float(value))


def kept_mass(logits: torch.Tensor, strategy: str, value: float, *, chunk_size: int = 1024) -> torch.Tensor:
    r"""Per-context kept mass `Z` of a strategy, computed from raw logits.

    `Z = exp(-d)` with `d = LSE(logits) / tau - LSE(scores)` the local-normalization distortion of one step, where
    `scores` is what the package's processor returns:

    - `"top_k"` ([`PerRowTopKLogitsWarper`], ties kept): mass of the `k` most likely tokens;
    - `"top_p"` ([`PerRowTopPLogitsWarper`], transformers' rule, the crossing token kept): in `[p, 1]`;
    - `"min_p"` ([`PerRowMinPLogitsWarper`]): mass of the tokens with `p(v) >= min_p * max p`;
    - `"temperature"` ([`PerRowTemperatureLogitsWarper`]): `sum_v p(v) ** (1 / tau)`;
    - `"distortion_aware_nucleus"` ([`DistortionAwareNucleusLogitsProcessor`]): exactly `p`.

    Args:
        logits (`torch.FloatTensor` of shape `(num_contexts, vocab_size)`): raw next-token logits.
        strategy (`str`): one of [`STRATEGIES`].
        value (`float`): the strategy's parameter (`k`, `p`, `tau` or `min_p`).
        chunk_size (`int`, *optional*, defaults to 1024): rows processed at once (bounds the memory of sorts).

    Returns:
        `torch.FloatTensor` of shape `(num_contexts,)` (float32, on the device of `logits`).
    """
    _check_strategy(strategy)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise invalid_argument("logits", shape, "a tensor of shape (num_contexts, vocab_size)")
    warper = _warper(strategy, value)
    temperature = float(value) if strategy == "temperature" else 1.0
    out = []
    for start in range(0, logits.shape[0], chunk_size):
        chunk = logits[start : start + chunk_size].float()  # (C, V)
        no_ids = torch.empty((chunk.shape[0], 0), dtype=torch.long, device=chunk.device)
        scores = warper(no_ids, chunk)  # (C, V)
        out.append(torch.exp(-distortion_from_scores(chunk, scores, temperature)))  # (C,)
    if not out:
        return torch.zeros(0, device=logits.device)
    return torch.cat(out)


def _mean_mass(logits: torch.Tensor, strategy: str, value: float) -> float:
    return float(kept_mass(logits, strategy, value).double().mean())
